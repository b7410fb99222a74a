"""Deduplication across a whole run, and of similar lines inside a document.

Across documents it runs as datatrove stages, so it scales out like the rest of a recipe:

1. :class:`DedupSignature` (one task per input shard): per document a MinHash signature of
   character n-grams (datatrove's signature format, so its bucket stage reads them) and an
   exact hash of the normalised text, both indexed by the document's position in its shard.
2. datatrove's ``MinhashDedupBuckets`` (one task per band): candidate pairs whose band matches.
3. :class:`DedupCluster` (one task): union-find over exact-hash groups and LSH pairs; each
   cluster keeps its *earliest* document (lowest shard, then position), so the result does
   not depend on scheduling; the others are marked ``exact_duplicate`` (same normalised text
   as the kept one) or ``near_duplicate``.
4. :class:`DedupFilter` (one task per shard): drops the marked documents into rejects.

State on disk per document: ``bands × (rows × 4 + 4)`` bytes of signatures (14 × 8 → 504 B)
plus 12 B of exact hash. In memory, per shard task: 8 B per document of exact hashes, and
``rows × 4 + 4`` B per document while datatrove sorts one band's signatures (36 B at 8 rows),
so memory follows the shard size, not the input size (more input: more ``--tasks``); in
the cluster task a union-find over *duplicated* documents only (about 100 B each).

:class:`SimilarLineDedup` removes lines that repeat an earlier line of the same document:
lines up to ``short_line_chars`` long must match exactly, longer ones within a Levenshtein
distance of ``max_edit_ratio`` × the longer length.
"""

from __future__ import annotations

import heapq
import re
import struct
from array import array
from collections.abc import Iterator

import numpy as np
import orjson
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from pydantic import NonNegativeInt, PositiveInt
from rapidfuzz.distance import Levenshtein

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep
from ctlab.data.textstats import codepoints, ngram_hashes, remember_last


@config
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    ngram: PositiveInt = 5  # characters per shingle
    bands: PositiveInt = 14
    rows: PositiveInt = 8
    seed: NonNegativeInt = 1
    similar_lines: bool = True
    max_edit_ratio: Fraction = 0.1
    short_line_chars: NonNegativeInt = 15

    @property
    def across_documents(self) -> bool:
        return self.exact or self.minhash

    def minhash_config(self) -> MinhashConfig:
        return MinhashConfig(
            n_grams=self.ngram,
            num_buckets=self.bands,
            hashes_per_bucket=self.rows,
            seed=self.seed,
            hash_config=HashConfig(precision=32, hash_fc="xxhash"),
        )


_NOT_CONTENT_RE = re.compile(r"[\s\W_]+")


@remember_last
def dedup_key(text: str) -> str:
    """The text duplicates are judged on: lower-cased, without whitespace, punctuation or symbols."""
    return _NOT_CONTENT_RE.sub("", text.lower())


EXACT_RECORD = struct.Struct("<QI")  # hash, position in shard
REMOVE_RECORD = struct.Struct("<IB")  # position in shard, reason code
REASONS = {1: "exact_duplicate", 2: "near_duplicate"}


class DedupSignature(MinhashDedupSignature):
    """Writes MinHash signatures (``minhash/bucket_XXX/RANK.minhash.sig``) and exact hashes (``exact/RANK.bin``).

    A terminal step: put the writer of the documents before it, so shard positions match.
    """

    name = "dedup-signature"
    type = "🫂 - DEDUP"

    def __init__(self, work_folder: str, config: DedupConfig):
        # datatrove's constructor also loads a word tokenizer, which character shingles do not use
        PipelineStep.__init__(self)
        self.dedup = config
        self.work_folder = work_folder
        self.output_folder = get_datafolder(f"{work_folder}/minhash")
        self.config = config.minhash_config()
        self.num_hashes = config.bands * config.rows
        self._parameters = None
        self.skip_existing_sigs = False

    def get_shingles(self, text: str) -> np.ndarray:
        """Hashes of the character n-grams of :func:`dedup_key` (uint64, shape (N, 1))."""
        return ngram_hashes(codepoints(dedup_key(text)), self.config.n_grams).reshape((-1, 1))

    @property
    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b): uint64 arrays of shape (1, bands * rows), a odd, from the configured seed."""
        if self._parameters is None:
            rng = np.random.default_rng(self.config.seed)
            count = self.num_hashes
            a = rng.integers(0, 2**64, size=(1, count), dtype=np.uint64, endpoint=False) | np.uint64(1)
            b = rng.integers(0, 2**64, size=(1, count), dtype=np.uint64, endpoint=False)
            self._parameters = (a, b)
        return self._parameters

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """MinHash with multiply-add-shift hashing: h(x) = (a·x + b mod 2^64) >> 32.

        Universal like datatrove's (a·x + b) mod (2^61 - 1), without the 64-bit division,
        about 3x faster. ``shingles``: uint64 (N, 1); returns ``bands`` lists of ``rows`` uint32.
        """
        a, b = self.parameters
        with np.errstate(over="ignore"):
            values = shingles * a  # (N, bands * rows)
            values += b
        values >>= np.uint64(32)
        signature = values.min(axis=0).astype(np.uint32)
        return [band.tolist() for band in np.split(signature, self.config.num_buckets)]

    def _record_exact(self, data: DocumentsPipeline, hashes: array) -> DocumentsPipeline:
        for doc in data:
            hashes.append(xxhash.xxh64_intdigest(dedup_key(doc.text)))
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        hashes = array("Q")  # 8 bytes per document; its position is the index
        stream = self._record_exact(data, hashes)
        if self.dedup.minhash:
            super().run(stream, rank, world_size)
        else:
            for _ in stream:
                pass
        if self.dedup.exact:
            values = np.frombuffer(hashes, dtype=np.uint64)
            order = np.argsort(values, kind="stable")
            records = np.empty(len(order), dtype=[("hash", "<u8"), ("index", "<u4")])
            records["hash"], records["index"] = values[order], order
            folder = get_datafolder(f"{self.work_folder}/exact")
            with folder.open(f"{rank:05d}.bin", "wb") as f:
                f.write(records.tobytes())


def _read_records(folder, name: str, record: struct.Struct) -> Iterator[tuple]:
    with folder.open(name, "rb") as f:
        while chunk := f.read(record.size * 4096):
            yield from record.iter_unpack(chunk)


def _exact_records(folder, name: str) -> Iterator[tuple[int, int, int]]:
    """(hash, shard, position) of one shard's exact-hash file, in hash order."""
    shard = int(name.split("/")[-1].split(".")[0])
    for h, index in _read_records(folder, name, EXACT_RECORD):
        yield h, shard, index


class DedupCluster(PipelineStep):
    """Joins exact groups and LSH pairs into clusters; writes ``remove/RANK.bin`` per shard. One task."""

    name = "dedup-cluster"
    type = "🫂 - DEDUP"

    def __init__(self, work_folder: str, config: DedupConfig):
        super().__init__()
        self.work_folder = work_folder
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("dedup clustering runs as a single task")
        parent: dict[tuple[int, int], tuple[int, int]] = {}
        exact_hash: dict[tuple[int, int], int] = {}

        def find(node):
            root = node
            while parent.get(root, root) != root:
                root = parent[root]
            while node != root:  # path compression
                parent[node], node = root, parent[node]
            return root

        def union(a, b):
            ra, rb = find(a), find(b)
            if ra != rb:
                keep, drop = min(ra, rb), max(ra, rb)
                parent[drop] = keep
                parent.setdefault(keep, keep)

        work = get_datafolder(self.work_folder)
        if self.config.exact and work.isdir("exact"):
            streams = [_exact_records(work, name) for name in work.list_files("exact")]
            previous = None
            for h, shard, index in heapq.merge(*streams):
                if previous is not None and previous[0] == h:
                    node, prev_node = (shard, index), previous[1:]
                    exact_hash[node] = exact_hash[prev_node] = h
                    union(prev_node, node)
                    self.stat_update("exact_pairs")
                previous = (h, shard, index)
        if self.config.minhash and work.isdir("dups"):
            pair = struct.Struct("<4I")
            for name in work.list_files("dups"):
                for f1, d1, f2, d2 in _read_records(work, name, pair):
                    union((f1, d1), (f2, d2))
                    self.stat_update("lsh_pairs")

        removals: dict[int, list[tuple[int, int]]] = {}
        for node in parent:
            root = find(node)
            if root == node:
                self.stat_update("clusters")
                continue
            same_text = node in exact_hash and exact_hash.get(root) == exact_hash[node]
            removals.setdefault(node[0], []).append((node[1], 1 if same_text else 2))
        out = get_datafolder(f"{self.work_folder}/remove")
        for shard, items in removals.items():
            items.sort()
            with out.open(f"{shard:05d}.bin", "wb") as f:
                for item in items:
                    f.write(REMOVE_RECORD.pack(*item))
            self.stat_update("to_remove", value=len(items))


class DedupFilter(CleaningStep):
    """Reads shard ``RANK`` of the filtered documents and drops the cluster stage's removals,
    accounted and rejected like every cleaning stage."""

    name = "dedup"
    type = "🫂 - DEDUP"

    def __init__(self, filtered_folder: str, work_folder: str, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.filtered_folder = filtered_folder
        self.work_folder = work_folder
        self._removals: dict[int, int] = {}  # position in the shard → reason code
        self._position = 0

    def _shard(self, rank: int) -> Iterator[Document]:
        folder = get_datafolder(self.filtered_folder)
        name = f"{rank:05d}.jsonl"
        if folder.exists(name):
            with folder.open(name, "rb") as f:
                for line in f:
                    yield Document(**orjson.loads(line))

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        reason = REASONS.get(self._removals.get(self._position, 0))
        self._position += 1
        return True if reason is None else (False, reason)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(f"{self.work_folder}/remove")
        name = f"{rank:05d}.bin"
        self._removals = dict(_read_records(folder, name, REMOVE_RECORD)) if folder.exists(name) else {}
        self._position = 0
        yield from super().run(self._shard(rank), rank, world_size)


class SimilarLineDedup(CleaningStep):
    """Drops lines that repeat an earlier line of the same document (exactly or nearly)."""

    name = "similar-lines"

    def __init__(self, config: DedupConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config

    def dedup_lines(self, text: str) -> tuple[str, int]:
        """(text without repeated lines, number of lines removed)."""
        seen_short: set[str] = set()
        long_lines: list[str] = []
        kept: list[str] = []
        removed = 0
        for line in text.split("\n"):
            key = line.strip()
            if not key:
                kept.append(line)
                continue
            if len(key) <= self.config.short_line_chars:
                duplicate = key in seen_short
                seen_short.add(key)
            else:
                duplicate = False
                for earlier in long_lines:
                    longest = max(len(earlier), len(key))
                    budget = int(self.config.max_edit_ratio * longest)
                    if abs(len(earlier) - len(key)) > budget:
                        continue
                    if Levenshtein.distance(earlier, key, score_cutoff=budget) <= budget:
                        duplicate = True
                        break
                if not duplicate:
                    long_lines.append(key)
            if duplicate:
                removed += 1
            else:
                kept.append(line)
        return "\n".join(kept), removed

    def process(self, doc: Document) -> bool:
        text, removed = self.dedup_lines(doc.text)
        if removed:
            self.stat_update("lines_removed", value=removed)
            doc.text = text
        return True
