"""The on-disk token store that ``ctlab data tokenize`` writes and packing and loading read.

Layout of a tokens folder::

    tokens.json                 manifest: tokenizer, dtype, special ids, sources, shards, mix
    shards/<shard>.bin          flat token ids (uint16 when the vocabulary fits, else uint32)
    shards/<shard>.idx.npy      (documents + 1,) int64 offsets of each document in the .bin
    shards/<shard>.json         the shard's input file and counts; present once the shard is complete
    mix/<source>.npy            (selected,) int64: the source's documents chosen by the mix

Each document is stored as ``[BOS] text tokens [EOS]``. Shards are concatenated in manifest
order into one *global* token space; a document or chunk is addressed by its global start
offset and length, which is all that packing needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctlab.errors import UserError
from ctlab.runs import read_json

MANIFEST = "tokens.json"
FORMAT = "ctlab-tokens/1"


@dataclass
class ShardInfo:
    name: str
    source: str
    documents: int
    tokens: int
    base: int  # global offset of the shard's first token


class TokenStore:
    """Read access to a tokens folder: document lengths for packing, token slices for loading."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise UserError(f"{folder} is not a tokens folder (no {MANIFEST}; make one with `ctlab data tokenize`)")
        self.manifest = read_json(path, "a tokens folder")
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise UserError(f"{path} is not a {FORMAT} manifest: run `ctlab data tokenize` again")
        self.shards: list[ShardInfo] = []
        base = 0
        try:
            self.dtype = np.dtype(self.manifest["dtype"])
            for source in self.manifest["sources"]:
                for shard in source["shards"]:
                    info = ShardInfo(shard["name"], source["name"], int(shard["documents"]), int(shard["tokens"]), base)
                    self.shards.append(info)
                    base += info.tokens
            self.pad_id = int(self.manifest["tokenizer"]["pad_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path} is damaged ({err!r}): run `ctlab data tokenize` again") from None
        self.total_tokens = base
        for shard in self.shards:
            data = self.folder / "shards" / f"{shard.name}.bin"
            expected = shard.tokens * self.dtype.itemsize
            if not data.is_file() or data.stat().st_size != expected:
                raise UserError(f"{data} is missing or not {expected:,} bytes long: run `ctlab data tokenize` again")
        self._bases = np.array([s.base for s in self.shards] + [base], dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def _offsets(self, shard: ShardInfo) -> np.ndarray:
        return np.load(self.folder / "shards" / f"{shard.name}.idx.npy", mmap_mode="r")

    def documents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The documents chosen by the mix, in store order: (global starts int64, lengths int64,
        source index int16), each of shape (documents,)."""
        starts, lengths, sources = [], [], []
        shard_iter = iter(self.shards)
        for source_index, source in enumerate(self.manifest["sources"]):
            source_starts, source_lengths = [], []
            for _ in source["shards"]:
                shard = next(shard_iter)
                offsets = np.asarray(self._offsets(shard), dtype=np.int64)
                source_starts.append(shard.base + offsets[:-1])
                source_lengths.append(np.diff(offsets))
            all_starts = np.concatenate(source_starts) if source_starts else np.zeros(0, np.int64)
            all_lengths = np.concatenate(source_lengths) if source_lengths else np.zeros(0, np.int64)
            chosen = np.load(self.folder / "mix" / f"{source['name']}.npy")
            starts.append(all_starts[chosen])
            lengths.append(all_lengths[chosen])
            sources.append(np.full(len(chosen), source_index, dtype=np.int16))
        if not starts:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.int16)
        return np.concatenate(starts), np.concatenate(lengths), np.concatenate(sources)

    def _tokens(self, index: int) -> np.ndarray:
        if index not in self._maps:
            path = self.folder / "shards" / f"{self.shards[index].name}.bin"
            self._maps[index] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[index]

    def read(self, start: int, length: int) -> np.ndarray:
        """(length,) token ids from global offset ``start``; a read never crosses a shard."""
        index = int(np.searchsorted(self._bases, start, side="right")) - 1
        local = start - int(self._bases[index])
        return self._tokens(index)[local : local + length]
