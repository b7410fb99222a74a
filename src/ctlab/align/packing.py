"""Encoded examples packed best-fit into training rows, served like a packed folder.

An example is one or more sequences that must stay together (a conversation; a preference
pair's prompt + chosen and prompt + rejected). Examples are packed whole with stage 3's
best-fit-decreasing (:func:`ctlab.tokens.pack.pack_bfd`) into rows of ``seq_len`` tokens;
each sequence in a row is its own document (positions restart at 0, so attention stays
inside it) and its own *segment*: sequences are numbered in example order over the whole set
(a pair ``j`` of a batch holds segments 2j and 2j + 1), so a loss can sum per sequence.
An example longer than ``seq_len`` is left out and counted, never cut.

``dataset[i]`` is row ``i`` as numpy arrays of shape (L,) — ``input_ids``, ``labels`` (the
next token where it is a target, else IGNORE_INDEX), ``position_ids``, ``segments`` (−1 on
padding). :class:`ctlab.tokens.loader.PackedLoader` shuffles, shards and resumes over it as
over a packed folder.
"""

from __future__ import annotations

import numpy as np

from ctlab.align.encode import Encoded
from ctlab.tokens.pack import pack_bfd
from ctlab.tokens.packed import IGNORE_INDEX


class PackedExamples:
    def __init__(self, examples: list[list[Encoded]], seq_len: int, pad_id: int, folder: str):
        self.seq_len, self.pad_id, self.folder = seq_len, pad_id, folder
        lengths = np.array([sum(len(s.ids) for s in example) for example in examples], dtype=np.int64)
        fits = lengths <= seq_len
        self.too_long = int((~fits).sum())
        self.examples = [example for example, ok in zip(examples, fits, strict=True) if ok]
        self.first_segment = np.cumsum([0] + [len(example) for example in self.examples])
        lengths = lengths[fits]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        packing = pack_bfd(starts, lengths, seq_len) if len(lengths) else None
        index_of = {int(start): i for i, start in enumerate(starts)}
        self.rows: list[list[int]] = []  # example indices of each row
        if packing is not None:
            for row in range(packing.sequences):
                self.rows.append([index_of[start] for start, _ in packing.sequence(row)])
        self.tokens = int(lengths.sum())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        length = self.seq_len
        input_ids = np.full(length, self.pad_id, dtype=np.int64)
        labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros(length, dtype=np.int64)
        segments = np.full(length, -1, dtype=np.int64)
        at = 0
        for example in self.rows[index]:
            for segment, sequence in enumerate(self.examples[example], self.first_segment[example]):
                size = len(sequence.ids)
                input_ids[at : at + size] = sequence.ids
                predicted = sequence.targets[1:]
                labels[at : at + size - 1] = np.where(predicted, sequence.ids[1:], IGNORE_INDEX)
                position_ids[at : at + size] = np.arange(size)
                segments[at : at + size] = segment
                at += size
        position_ids[at:] = np.arange(length - at)  # padding: one more document
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "segments": segments}
