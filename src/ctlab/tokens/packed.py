"""Packed folders: ``ctlab data pack`` writes one from a tokens folder; training reads it.

Layout::

    run.json                the packing's identity (see :mod:`ctlab.runs`): a rerun with other
                            tokens, seq_len or strategy is refused
    pack.json               tokens folder, its manifest's digest, seq_len, strategy, pad id;
                            written last, it marks the folder complete
    chunk_starts.npy        (C,) int64 global token offsets, in sequence order
    chunk_lengths.npy       (C,) int32
    sequence_offsets.npy    (S + 1,) int64: sequence s = chunks [s, s + 1)
    pack_stats.json         the figures of the packing (see :func:`ctlab.tokens.pack.pack_stats`)

Only references are stored: a sequence's tokens are read from the tokens folder when needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctlab.errors import UserError
from ctlab.runs import claim, file_digest, read_json, save_npy, write_json
from ctlab.tokens.pack import STRATEGIES, Packing, pack, pack_stats
from ctlab.tokens.store import MANIFEST, TokenStore

PACK_MANIFEST = "pack.json"
PACK_FORMAT = "ctlab-pack/1"
IGNORE_INDEX = -100  # label of positions that predict nothing (cross-entropy's ignore_index)
MAX_SEQ_LEN = 1 << 20  # packing holds arrays of this size; the loader, sequences of it


def write_packing(tokens_dir: str, out: str, seq_len: int, strategy: str = "bfd") -> dict:
    """Pack the documents of a tokens folder into ``out``; returns the stats (also in pack_stats.json).

    ``out`` is claimed as a run folder: a rerun of the same packing redoes it; a folder holding
    another packing or anything else is refused.
    """
    if not 2 <= seq_len <= MAX_SEQ_LEN:
        raise UserError(f"--seq-len must be between 2 and {MAX_SEQ_LEN:,}")
    if strategy not in STRATEGIES:
        raise UserError(f"unknown packing strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    store = TokenStore(tokens_dir)
    tokens_sha256 = file_digest(store.folder / MANIFEST)
    identity = {"tokens": str(store.folder.resolve()), "tokens_manifest_sha256": tokens_sha256, "seq_len": seq_len}
    folder = claim(out, "pack", {**identity, "strategy": strategy}).folder
    starts, lengths, _sources = store.documents()
    packing = pack(starts, lengths, seq_len, strategy)
    stats = {"strategy": strategy, **pack_stats(starts, lengths, seq_len, packing)}
    (folder / PACK_MANIFEST).unlink(missing_ok=True)  # written last: marks the folder complete
    save_npy(folder / "chunk_starts.npy", packing.chunk_starts)
    save_npy(folder / "chunk_lengths.npy", packing.chunk_lengths)
    save_npy(folder / "sequence_offsets.npy", packing.sequence_offsets)
    write_json(folder / "pack_stats.json", stats)
    manifest = {"format": PACK_FORMAT, **identity, "strategy": strategy, "pad_id": store.pad_id}
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
    ``position_ids`` (L,) int64, restarting at 0 at every chunk (and on padding).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / PACK_MANIFEST
        if not path.is_file():
            raise UserError(f"{folder} is not a packed folder (no {PACK_MANIFEST}; make one with `ctlab data pack`)")
        self.manifest = read_json(path, "a packed folder")
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != PACK_FORMAT:
            raise UserError(f"{path} is not a {PACK_FORMAT} manifest: pack the tokens again")
        try:
            self.store = TokenStore(self.manifest["tokens"])
            if file_digest(self.store.folder / MANIFEST) != self.manifest["tokens_manifest_sha256"]:
                raise UserError(f"{self.manifest['tokens']} changed since {folder} was packed: pack it again")
            self.seq_len: int = int(self.manifest["seq_len"])
            self.pad_id: int = int(self.manifest["pad_id"])
            self.packing = Packing(
                np.load(self.folder / "chunk_starts.npy", mmap_mode="r"),
                np.load(self.folder / "chunk_lengths.npy", mmap_mode="r"),
                np.load(self.folder / "sequence_offsets.npy", mmap_mode="r"),
            )
        except (KeyError, TypeError, OSError, ValueError) as err:
            raise UserError(f"{folder} is a damaged packed folder ({err!r}): pack it again") from None
        self.fingerprint = file_digest(path)  # what the packing is: tokens, their digest, seq_len, strategy

    @property
    def tokenizer(self) -> dict:
        """The tokenizer the tokens were made with (path, sha256, vocab_size and special ids)."""
        return self.store.manifest["tokenizer"]

    def check_tokenizer(self, what: str, sha256: str | None, vocab_size: int | None = None) -> None:
        """Refuse ``what`` (data or a model) if it was made with another tokenizer than these
        tokens: ``sha256`` of its tokenizer.json (None: not known), its vocabulary size (a model's
        embedding must cover every token id)."""
        mine = self.tokenizer
        if sha256 is not None and sha256 != mine["sha256"]:
            raise UserError(f"{what} was made with another tokenizer than {self.folder} ({Path(mine['path']).parent})")
        if vocab_size is not None and vocab_size < mine["vocab_size"]:
            raise UserError(
                f"{what} has a vocabulary of {vocab_size:,} tokens, fewer than the {mine['vocab_size']:,} "
                f"of the tokenizer of {self.folder}"
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
        at = 0
        for start, size in self.packing.sequence(index):
            tokens = self.store.read(start, size)
            input_ids[at : at + size] = tokens
            labels[at : at + size - 1] = tokens[1:]
            position_ids[at : at + size] = np.arange(size)
            at += size
        position_ids[at:] = np.arange(length - at)  # padding: one more segment
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def tokenizer_sha256(folder: str | Path) -> str | None:
    """The digest of the tokenizer.json in a model or tokenizer folder (None when it has none)."""
    path = Path(folder) / "tokenizer.json"
    return file_digest(path) if path.is_file() else None
