"""Packed folders: ``ctlab data pack`` writes one from a tokens folder; training reads it.

Layout::

    pack.json               tokens folder, its manifest's digest, seq_len, strategy, pad id
    chunk_starts.npy        (C,) int64 global token offsets, in sequence order
    chunk_lengths.npy       (C,) int32
    sequence_offsets.npy    (S + 1,) int64: sequence s = chunks [s, s + 1)
    pack_stats.json         the figures of the packing (see :func:`ctlab.tokens.pack.pack_stats`)

Only references are stored: a sequence's tokens are read from the tokens folder when needed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ctlab.atomic import save_npy, write_json
from ctlab.tokens.pack import Packing, pack, pack_stats
from ctlab.tokens.store import MANIFEST, StoreError, TokenStore

PACK_MANIFEST = "pack.json"
PACK_FORMAT = "ctlab-pack/1"
IGNORE_INDEX = -100  # label of positions that predict nothing (cross-entropy's ignore_index)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_packing(tokens_dir: str, out: str, seq_len: int, strategy: str = "bfd") -> dict:
    """Pack the documents of a tokens folder into ``out``; returns the stats (also in pack_stats.json).

    Refuses an ``out`` that holds anything but an earlier packing (its files are replaced).
    """
    store = TokenStore(tokens_dir)
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not (folder / PACK_MANIFEST).is_file():
        raise StoreError(f"{out} is not empty and not a packed folder: choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    starts, lengths, _sources = store.documents()
    packing = pack(starts, lengths, seq_len, strategy)
    stats = {"strategy": strategy, **pack_stats(starts, lengths, seq_len, packing)}
    (folder / PACK_MANIFEST).unlink(missing_ok=True)  # written last: marks the folder complete
    save_npy(folder / "chunk_starts.npy", packing.chunk_starts)
    save_npy(folder / "chunk_lengths.npy", packing.chunk_lengths)
    save_npy(folder / "sequence_offsets.npy", packing.sequence_offsets)
    write_json(folder / "pack_stats.json", stats)
    manifest = {
        "format": PACK_FORMAT,
        "tokens": str(Path(tokens_dir).absolute()),
        "tokens_manifest_sha256": _digest(store.folder / MANIFEST),
        "seq_len": seq_len,
        "strategy": strategy,
        "pad_id": store.pad_id,
    }
    write_json(folder / PACK_MANIFEST, manifest)
    return stats


def stats_table(stats: dict) -> str:
    keys = (
        "strategy",
        "seq_len",
        "documents",
        "tokens",
        "chunks",
        "truncated_documents",
        "documents_longer_than_seq_len",
        "sequences",
        "lower_bound_sequences",
        "sequences_over_lower_bound",
        "padding_fraction",
    )
    width = max(map(len, keys))
    lines = []
    for key in keys:
        value = stats[key]
        shown = f"{value:.4%}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


class PackedDataset:
    """Random access to the sequences of a packed folder.

    ``dataset[i]`` is a dict of numpy arrays for sequence ``i`` (L = seq_len):
    ``input_ids`` (L,) int64, padded with the pad id; ``labels`` (L,) int64, the next token
    within the same chunk, IGNORE_INDEX at each chunk's last position and on padding;
    ``position_ids`` (L,) int64, restarting at 0 at every chunk (and on padding);
    ``seqlens`` (k,) int32, the lengths of the chunks and then of the padding if any (sum L).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / PACK_MANIFEST
        if not path.is_file():
            raise StoreError(f"{folder} is not a packed folder (no {PACK_MANIFEST}; make one with `ctlab data pack`)")
        self.manifest = json.loads(path.read_text())
        self.store = TokenStore(self.manifest["tokens"])
        if _digest(self.store.folder / MANIFEST) != self.manifest["tokens_manifest_sha256"]:
            raise StoreError(f"{self.manifest['tokens']} changed since {folder} was packed: pack it again")
        self.seq_len: int = self.manifest["seq_len"]
        self.pad_id: int = self.manifest["pad_id"]
        self.packing = Packing(
            np.load(self.folder / "chunk_starts.npy", mmap_mode="r"),
            np.load(self.folder / "chunk_lengths.npy", mmap_mode="r"),
            np.load(self.folder / "sequence_offsets.npy", mmap_mode="r"),
        )

    def __len__(self) -> int:
        return self.packing.sequences

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        length = self.seq_len
        input_ids = np.full(length, self.pad_id, dtype=np.int64)
        labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros(length, dtype=np.int64)
        seqlens = []
        at = 0
        for start, size in self.packing.sequence(index):
            tokens = self.store.read(start, size)
            input_ids[at : at + size] = tokens
            labels[at : at + size - 1] = tokens[1:]
            position_ids[at : at + size] = np.arange(size)
            seqlens.append(size)
            at += size
        if at < length:
            seqlens.append(length - at)
            position_ids[at:] = np.arange(length - at)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "seqlens": np.array(seqlens, dtype=np.int32),
        }
