"""Pack documents into fixed-length training sequences, from their lengths alone.

Two strategies, both exact about every token:

``bfd``     Best-Fit-Decreasing ("Fewer Truncations Improve Language Modeling", arXiv
            2404.10830): only documents longer than ``L`` are cut (into ``L``-token pieces and
            a remainder); chunks are counting-sorted by length, longest first, and each goes into
            the open sequence with the least room that still fits it, found with a max segment
            tree over remaining capacities 1..L (O(N log L)). Among sequences with the same room
            the one that reached it first is chosen, as trl's ``pack_dataset`` does, so both give
            the same bins on the same input.
``concat``  concatenate every document and cut the stream every ``L`` tokens: the usual baseline,
            which cuts most documents that cross a window edge.

A packing is three arrays over a token space of global offsets (see :mod:`ctlab.tokens.store`):
chunk starts and lengths in sequence order, and each sequence's range of chunks. No token is
read: tens of millions of documents pack in the memory of their lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

STRATEGIES = ("bfd", "concat")


@dataclass
class Packing:
    """Sequence ``s`` is the chunks ``sequence_offsets[s]:sequence_offsets[s + 1]``, in order.

    chunk_starts:     (C,) int64, global token offset of each chunk
    chunk_lengths:    (C,) int32, tokens in each chunk (1..L)
    sequence_offsets: (S + 1,) int64
    """

    chunk_starts: np.ndarray
    chunk_lengths: np.ndarray
    sequence_offsets: np.ndarray

    @property
    def sequences(self) -> int:
        return len(self.sequence_offsets) - 1

    def sequence(self, index: int) -> list[tuple[int, int]]:
        """(global start, length) of the chunks of sequence ``index``."""
        lo, hi = self.sequence_offsets[index], self.sequence_offsets[index + 1]
        return list(zip(self.chunk_starts[lo:hi].tolist(), self.chunk_lengths[lo:hi].tolist(), strict=True))


def split_long_documents(
    doc_starts: np.ndarray, doc_lengths: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of at most ``seq_len`` tokens: a longer document becomes ``seq_len``-token pieces
    followed by its remainder; the others stay whole. Returns (starts, lengths), document order."""
    doc_lengths = doc_lengths.astype(np.int64)
    pieces = -(-doc_lengths // seq_len)  # ceil
    owner = np.repeat(np.arange(len(doc_lengths)), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    within = (np.arange(len(owner)) - first_piece) * seq_len
    starts = doc_starts.astype(np.int64)[owner] + within
    lengths = np.minimum(doc_lengths[owner] - within, seq_len).astype(np.int32)
    return starts, lengths


@numba.njit(cache=True)
def _descending_order(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Counting sort: indices of ``lengths`` (values 1..seq_len) longest first, stable."""
    counts = np.zeros(seq_len + 2, np.int64)
    for length in lengths:
        counts[length] += 1
    position = np.zeros(seq_len + 2, np.int64)
    total = 0
    for length in range(seq_len, 0, -1):
        position[length] = total
        total += counts[length]
    order = np.empty(len(lengths), np.int64)
    for i in range(len(lengths)):
        order[position[lengths[i]]] = i
        position[lengths[i]] += 1
    return order


@numba.njit(cache=True)
def _set_leaf(tree: np.ndarray, leaves: int, capacity: int, value: int) -> None:
    node = leaves + capacity - 1
    tree[node] = value
    node >>= 1
    while node >= 1:
        left, right = tree[2 * node], tree[2 * node + 1]
        tree[node] = left if left >= right else right
        node >>= 1


@numba.njit(cache=True)
def _best_fit(sorted_lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Bin of each chunk (lengths longest first), and the number of bins.

    tree: max segment tree whose leaf ``c`` holds ``c`` while some open bin has exactly ``c``
    tokens of room (leaf ``seq_len`` always: a new bin); bins with the same room wait in a FIFO
    queue (linked through ``next_bin``).
    """
    leaves = 1
    while leaves < seq_len:
        leaves <<= 1
    tree = np.zeros(2 * leaves, np.int64)
    head = np.full(seq_len + 1, -1, np.int64)
    tail = np.full(seq_len + 1, -1, np.int64)
    next_bin = np.full(len(sorted_lengths), -1, np.int64)
    bin_of = np.empty(len(sorted_lengths), np.int64)
    bins = 0
    _set_leaf(tree, leaves, seq_len, seq_len)
    for i in range(len(sorted_lengths)):
        length = sorted_lengths[i]
        node = 1
        while node < leaves:  # leftmost leaf (least room) with room >= length
            node = 2 * node if tree[2 * node] >= length else 2 * node + 1
        room = tree[node]
        if room == seq_len:
            chosen = bins
            bins += 1
        else:
            chosen = head[room]
            head[room] = next_bin[chosen]
            if head[room] == -1:
                tail[room] = -1
                _set_leaf(tree, leaves, room, 0)
        bin_of[i] = chosen
        left = room - length
        if left > 0:
            next_bin[chosen] = -1
            if tail[left] == -1:
                head[left] = chosen
                _set_leaf(tree, leaves, left, left)
            else:
                next_bin[tail[left]] = chosen
            tail[left] = chosen
    return bin_of, bins


def pack_bfd(doc_starts: np.ndarray, doc_lengths: np.ndarray, seq_len: int) -> Packing:
    """Best-Fit-Decreasing packing of documents (global starts, lengths) into ``seq_len`` tokens."""
    starts, lengths = split_long_documents(doc_starts, doc_lengths, seq_len)
    order = _descending_order(lengths, seq_len)
    bin_of, bins = _best_fit(lengths[order], seq_len)
    by_bin = order[np.argsort(bin_of, kind="stable")]  # chunks of each bin in the order they went in
    offsets = np.zeros(bins + 1, np.int64)
    np.cumsum(np.bincount(bin_of, minlength=bins), out=offsets[1:])
    return Packing(starts[by_bin], lengths[by_bin], offsets)


def pack_concat(doc_starts: np.ndarray, doc_lengths: np.ndarray, seq_len: int) -> Packing:
    """Concatenate the documents in order and cut every ``seq_len`` tokens."""
    doc_lengths = doc_lengths.astype(np.int64)
    stream_ends = np.cumsum(doc_lengths)
    total = int(stream_ends[-1]) if len(stream_ends) else 0
    if total == 0:
        return Packing(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(1, np.int64))
    stream_starts = stream_ends - doc_lengths
    cuts = np.sort(np.concatenate([stream_starts, np.arange(0, total, seq_len)]), kind="stable")  # two sorted runs
    cuts = cuts[np.append(True, cuts[1:] != cuts[:-1])]
    piece_ends = np.append(cuts[1:], total)
    doc = np.searchsorted(stream_starts, cuts, side="right") - 1
    starts = doc_starts.astype(np.int64)[doc] + (cuts - stream_starts[doc])
    lengths = (piece_ends - cuts).astype(np.int32)
    keep = lengths > 0  # empty documents leave empty pieces
    starts, lengths, cuts = starts[keep], lengths[keep], cuts[keep]
    sequences = -(-total // seq_len)
    offsets = np.searchsorted(cuts // seq_len, np.arange(sequences + 1), side="left").astype(np.int64)
    return Packing(starts, lengths, offsets)


def pack(doc_starts: np.ndarray, doc_lengths: np.ndarray, seq_len: int, strategy: str = "bfd") -> Packing:
    if seq_len < 1:
        raise ValueError(f"sequence length must be at least 1, not {seq_len}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown packing strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    keep = doc_lengths > 0
    doc_starts, doc_lengths = np.asarray(doc_starts)[keep], np.asarray(doc_lengths)[keep]
    return (pack_bfd if strategy == "bfd" else pack_concat)(doc_starts, doc_lengths, seq_len)


def pack_stats(doc_starts: np.ndarray, doc_lengths: np.ndarray, seq_len: int, packing: Packing) -> dict:
    """The figures of a packing: documents, chunks, cut documents, sequences against the lower
    bound ceil(tokens / L), and the fraction of sequence slots left as padding."""
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    nonempty = doc_lengths > 0
    tokens = int(doc_lengths.sum())
    # a document is cut when some chunk starts strictly inside it
    starts = np.sort(doc_starts[nonempty])
    owner = np.searchsorted(starts, packing.chunk_starts, side="right") - 1
    inside = packing.chunk_starts != starts[owner]
    truncated = len(np.unique(owner[inside]))
    sequences = packing.sequences
    lower_bound = -(-tokens // seq_len)
    slots = sequences * seq_len
    return {
        "seq_len": seq_len,
        "documents": int(nonempty.sum()),
        "empty_documents": int((~nonempty).sum()),
        "tokens": tokens,
        "chunks": len(packing.chunk_lengths),
        "truncated_documents": truncated,
        "documents_longer_than_seq_len": int((doc_lengths > seq_len).sum()),
        "sequences": sequences,
        "lower_bound_sequences": lower_bound,
        "sequences_over_lower_bound": sequences / lower_bound - 1 if lower_bound else 0.0,
        "padding_fraction": 1 - tokens / slots if slots else 0.0,
        "max_chunks_per_sequence": int(np.diff(packing.sequence_offsets).max()) if sequences else 0,
    }
