"""Drop documents from blocklisted sites with datatrove's URLFilter and its bundled lists.

The lists ship inside the datatrove wheel; the public-suffix list comes from tldextract's
bundled snapshot (never fetched), so the stage runs offline. Documents without a URL
(e.g. JSONL without a ``url`` field) pass, counted as ``no_url``.

datatrove holds its 4.6M blocklisted domains as a Python set: about 3 s to build and a few
hundred MB in every task. Here the same list is a sorted array of their 64-bit xxhash
values (37 MB), built once and cached as ``.npy`` beside the extracted list; a lookup is a
binary search (a false match needs a 64-bit hash collision: ~1e-13 per lookup). Every
other list and every check is datatrove's.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import field
from functools import lru_cache
from urllib.parse import urlsplit

import numpy as np
import xxhash
from datatrove.data import Document
from datatrove.pipeline.filters import url_filter as datatrove_url
from datatrove.pipeline.filters.url_filter import URLFilter

from ctlab.config import config
from ctlab.data.steps import CleaningStep

_ARCHIVE = "url_filterblacklistsv0_3_0.tar.gz"


@config
class UrlConfig:
    enabled: bool = True
    extra_domains: list[str] = field(default_factory=list)
    extra_banned_words: list[str] = field(default_factory=list)


class HashedLines:
    """Membership in the stripped, non-comment lines of a file (datatrove's list parsing), as hashes."""

    def __init__(self, path: str, extra: set[str] = frozenset()):
        stat = os.stat(path)
        cache = f"{path}.{stat.st_size}-{stat.st_mtime_ns}.xxh64.npy"
        try:
            self._hashes = np.load(cache, mmap_mode="r", allow_pickle=False)  # a lookup reads ~22 pages
        except (OSError, ValueError):
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = (line.strip() for line in f if line[0] != "#")
                self._hashes = np.unique(np.fromiter(map(_hash, lines), dtype=np.uint64))
            partial = f"{cache}.{os.getpid()}.npy"
            try:  # a read-only cache only costs the hashing again
                np.save(partial, self._hashes)
                os.replace(partial, cache)
            except OSError:
                pass
        self._extra = set(extra)

    def __contains__(self, item: str) -> bool:
        if item in self._extra:
            return True
        value = np.uint64(_hash(item))
        index = int(np.searchsorted(self._hashes, value))
        return index < len(self._hashes) and self._hashes[index] == value


def _hash(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode("utf-8", "surrogateescape"))


class CompactURLFilter(URLFilter):
    """datatrove's URLFilter with the domain list held by :class:`HashedLines`."""

    def download_data(self):
        if self._downloaded or not self.use_integrated_lists:
            return
        folder = datatrove_url.cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")

        def extract():
            with tarfile.open(os.path.join(datatrove_url.ASSETS_PATH, _ARCHIVE), "r:gz") as tar:
                tar.extractall(folder, filter="data")

        datatrove_url.safely_create_file(os.path.join(folder, _ARCHIVE), extract)
        get_list, assets = datatrove_url.get_list, datatrove_url.ASSETS_PATH
        self.block_listed_domains = HashedLines(os.path.join(folder, "domains"), self.block_listed_domains)
        self.block_listed_url = get_list(folder, "urls", self.block_listed_url, do_normalize=False)
        self.banned_words = get_list(assets, "banned_words.txt", self.banned_words)
        self.banned_subwords = get_list(assets, "banned_subwords.txt", self.banned_subwords)
        self.soft_banned_words = get_list(assets, "soft_banned_words.txt", self.soft_banned_words)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True


class _HostCachedExtract:
    """tldextract per host name, cached: datatrove's filter only uses the host's domain parts."""

    def __init__(self, extract):
        self._extract = lru_cache(maxsize=1 << 16)(extract)

    def __call__(self, url: str):
        return self._extract(urlsplit(url).hostname or url)


class UrlBlocklistFilter(CleaningStep):
    """Reasons are datatrove's: ``domain``, ``subdomain``, ``url``, ``hard_blacklisted``, ..."""

    name = "url"

    def __init__(self, config: UrlConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config
        self._blocklist = None

    def _filter(self) -> URLFilter:
        if self._blocklist is None:
            from tldextract import TLDExtract

            blocklist = CompactURLFilter(
                extra_domains=self.config.extra_domains or None,
                banned_words=self.config.extra_banned_words or None,
            )
            blocklist.tldextractor = _HostCachedExtract(TLDExtract(suffix_list_urls=(), cache_dir=None))
            self._blocklist = blocklist
        return self._blocklist

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.metadata.get("url"):
            self.stat_update("no_url")
            return True
        return self._filter().filter(doc)
