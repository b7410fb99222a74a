"""Drop documents from blocklisted sites with datatrove's URLFilter and its bundled lists.

The lists ship inside the datatrove wheel; the public-suffix list comes from tldextract's
bundled snapshot (never fetched), so the stage runs offline. Documents without a URL
(e.g. JSONL without a ``url`` field) pass, counted as ``no_url``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

from datatrove.data import Document
from datatrove.pipeline.filters.url_filter import URLFilter

from ctlab.data.steps import CleaningStep


@dataclass
class UrlConfig:
    enabled: bool = True
    extra_domains: list[str] = field(default_factory=list)
    extra_banned_words: list[str] = field(default_factory=list)


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

            blocklist = URLFilter(
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
