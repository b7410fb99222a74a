"""Property tests of ``ctlab.tokens.pack``: token conservation, cuts, capacities, an independent
quadratic Best-Fit-Decreasing, ``pack_stats`` and exact agreement with trl's ``pack_dataset``."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctlab.tokens.pack import Packing, pack, pack_stats, split_long_documents

FAST = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# ---------------------------------------------------------------- generated corpora


@st.composite
def corpora(draw, max_docs: int = 150, max_seq_len: int = 48, min_docs: int = 0):
    """(starts, lengths, L): documents at non-contiguous global starts, listed in any order, with
    empty documents, documents of exactly L (and multiples), and documents up to 3L."""
    seq_len = draw(st.one_of(st.integers(1, 4), st.integers(5, max_seq_len)))
    length = st.one_of(
        st.just(0),
        st.integers(1, seq_len),
        st.integers(1, max(1, seq_len // 4)),  # many short documents
        st.sampled_from([seq_len, 2 * seq_len, 3 * seq_len]),
        st.integers(seq_len, 3 * seq_len),
    )
    # hypothesis keeps lists short unless told: draw the size first, small or up to max_docs
    size = draw(st.one_of(st.integers(min_docs, min(max_docs, 8)), st.integers(min_docs, max_docs)))
    lengths = draw(st.lists(length, min_size=size, max_size=size))
    gaps = draw(st.lists(st.integers(0, 40), min_size=len(lengths), max_size=len(lengths)))
    base = draw(st.integers(0, 10**9))
    layout_starts = base + np.cumsum(np.array(gaps, np.int64)) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = draw(st.permutations(range(len(lengths))))  # documents need not be listed in offset order
    starts = np.asarray(layout_starts, np.int64)[list(order)] if lengths else np.zeros(0, np.int64)
    lengths = np.array(lengths, np.int64)[list(order)] if len(order) else np.zeros(0, np.int64)
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    return starts.astype(np.int64), lengths.astype(dtype), seq_len


def sequences(packing: Packing) -> list[list[tuple[int, int]]]:
    return [packing.sequence(s) for s in range(packing.sequences)]


def document_tokens(starts: np.ndarray, lengths: np.ndarray) -> Counter:
    return Counter(t for s, n in zip(starts.tolist(), lengths.tolist(), strict=True) for t in range(s, s + n))


def chunk_tokens(packing: Packing) -> Counter:
    return Counter(
        t
        for s, n in zip(packing.chunk_starts.tolist(), packing.chunk_lengths.tolist(), strict=True)
        for t in range(s, s + n)
    )


# ---------------------------------------------------------------- independent references


def reference_chunks(starts: np.ndarray, lengths: np.ndarray, seq_len: int) -> list[tuple[int, int]]:
    """Non-empty documents in list order, each longer one as L-token pieces then its remainder."""
    chunks = []
    for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        for offset in range(0, n, seq_len):
            chunks.append((s + offset, min(seq_len, n - offset)))
    return chunks


def reference_bfd(starts: np.ndarray, lengths: np.ndarray, seq_len: int) -> list[list[tuple[int, int]]]:
    """Plain O(N * bins) Best-Fit-Decreasing; ties between equal rooms go to the bin whose room
    changed earliest (bin creation counts as a change)."""
    chunks = reference_chunks(starts, lengths, seq_len)
    chunks = sorted(chunks, key=lambda chunk: -chunk[1])  # stable: ties keep chunk order
    bins: list[list[tuple[int, int]]] = []
    room: list[int] = []
    changed: list[int] = []
    for step, chunk in enumerate(chunks):
        fitting = [b for b in range(len(bins)) if room[b] >= chunk[1]]
        if fitting:
            b = min(fitting, key=lambda b: (room[b], changed[b]))
        else:
            b = len(bins)
            bins.append([])
            room.append(seq_len)
            changed.append(step)
        bins[b].append(chunk)
        room[b] -= chunk[1]
        changed[b] = step
    return bins


def reference_concat(starts: np.ndarray, lengths: np.ndarray, seq_len: int) -> list[list[tuple[int, int]]]:
    """Walk the documents in list order, filling windows of L tokens."""
    out, current, room = [], [], seq_len
    for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        offset = 0
        while offset < n:
            take = min(room, n - offset)
            current.append((s + offset, take))
            offset += take
            room -= take
            if room == 0:
                out.append(current)
                current, room = [], seq_len
    if current:
        out.append(current)
    return out


def concat_cut_documents(lengths: np.ndarray, seq_len: int) -> int:
    """Documents (non-empty, list order) with a window edge strictly inside their stream span."""
    cut, position = 0, 0
    for n in lengths.tolist():
        if n > 0 and (position // seq_len + 1) * seq_len < position + n:
            cut += 1
        position += n
    return cut


def check_layout(packing: Packing, seq_len: int) -> None:
    assert packing.chunk_starts.dtype == np.int64
    assert packing.chunk_lengths.dtype == np.int32
    assert packing.sequence_offsets.dtype == np.int64
    assert len(packing.chunk_starts) == len(packing.chunk_lengths) == packing.sequence_offsets[-1]
    assert packing.sequence_offsets[0] == 0
    assert np.all(np.diff(packing.sequence_offsets) >= 1)  # no empty sequence
    assert np.all((packing.chunk_lengths >= 1) & (packing.chunk_lengths <= seq_len))


# ---------------------------------------------------------------- properties


@settings(max_examples=150, **FAST)
@given(corpora(), st.sampled_from(["bfd", "concat"]))
def test_every_token_exactly_once_and_capacity(corpus, strategy):
    starts, lengths, seq_len = corpus
    packing = pack(starts, lengths, seq_len, strategy)
    check_layout(packing, seq_len)
    assert chunk_tokens(packing) == document_tokens(starts, lengths)
    totals = np.add.reduceat(packing.chunk_lengths.astype(np.int64), packing.sequence_offsets[:-1])
    if packing.sequences:
        assert totals.max() <= seq_len
    if strategy == "concat" and packing.sequences:
        assert np.all(totals[:-1] == seq_len)
        assert 1 <= totals[-1] <= seq_len


@settings(max_examples=150, **FAST)
@given(corpora())
def test_bfd_cuts_only_long_documents(corpus):
    starts, lengths, seq_len = corpus
    packing = pack(starts, lengths, seq_len, "bfd")
    # split order: per document (list order), full L pieces then the remainder
    split_starts, split_lengths = split_long_documents(starts[lengths > 0], lengths[lengths > 0], seq_len)
    assert list(zip(split_starts.tolist(), split_lengths.tolist(), strict=True)) == reference_chunks(
        starts, lengths, seq_len
    )
    # in the packing, each document's chunks are exactly those pieces (a short one stays whole)
    by_start = dict(zip(packing.chunk_starts.tolist(), packing.chunk_lengths.tolist(), strict=True))
    assert len(by_start) == len(packing.chunk_starts)
    for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
        if n == 0:
            continue
        expected = [(s + o, min(seq_len, n - o)) for o in range(0, n, seq_len)]
        assert len(expected) == math.ceil(n / seq_len)
        assert [(c, by_start.get(c)) for c, _ in expected] == expected
        if n <= seq_len:
            assert expected == [(s, n)]


@settings(max_examples=200, **FAST)
@given(corpora())
def test_bfd_matches_quadratic_reference(corpus):
    starts, lengths, seq_len = corpus
    assert sequences(pack(starts, lengths, seq_len, "bfd")) == reference_bfd(starts, lengths, seq_len)


@settings(max_examples=150, **FAST)
@given(corpora())
def test_concat_matches_reference(corpus):
    starts, lengths, seq_len = corpus
    assert sequences(pack(starts, lengths, seq_len, "concat")) == reference_concat(starts, lengths, seq_len)


@settings(max_examples=150, **FAST)
@given(corpora(), st.sampled_from(["bfd", "concat"]))
def test_pack_stats(corpus, strategy):
    starts, lengths, seq_len = corpus
    tokens = int(lengths.astype(np.int64).sum())
    packing = pack(starts, lengths, seq_len, strategy)
    stats = pack_stats(starts, lengths, seq_len, packing)
    nonempty = lengths[lengths > 0].astype(np.int64)
    if strategy == "bfd":
        assert stats["truncated_documents"] == int((nonempty > seq_len).sum())
        assert stats["chunks"] == int((-(-nonempty // seq_len)).sum())
    else:
        assert stats["truncated_documents"] == concat_cut_documents(lengths, seq_len)
        assert stats["sequences"] == math.ceil(tokens / seq_len)
    assert stats["chunks"] == len(packing.chunk_lengths)
    assert stats["documents"] == len(nonempty)
    assert stats["empty_documents"] == int((lengths == 0).sum())
    assert stats["tokens"] == tokens
    assert stats["documents_longer_than_seq_len"] == int((nonempty > seq_len).sum())
    assert stats["seq_len"] == seq_len
    assert stats["sequences"] == packing.sequences
    assert stats["lower_bound_sequences"] == math.ceil(tokens / seq_len)
    assert stats["sequences"] >= stats["lower_bound_sequences"]
    if packing.sequences:
        assert stats["padding_fraction"] == pytest.approx(1 - tokens / (packing.sequences * seq_len), abs=1e-12)
        assert stats["max_chunks_per_sequence"] == max(len(s) for s in sequences(packing))
    else:
        assert tokens == 0
        assert stats["padding_fraction"] == 0.0
        assert stats["max_chunks_per_sequence"] == 0


@settings(max_examples=25, **FAST)
@given(corpora(max_docs=300, max_seq_len=64, min_docs=1))
def test_bfd_equals_trl_bfd_split(corpus):
    datasets = pytest.importorskip("datasets")
    trl_data_utils = pytest.importorskip("trl.data_utils")
    datasets.disable_progress_bars()
    starts, lengths, seq_len = corpus
    assume(lengths.sum() > 0)  # an all-empty list column has no integer type for arrow
    docs = [list(range(s, s + n)) for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    ds = datasets.Dataset.from_dict({"input_ids": docs})
    packed = trl_data_utils.pack_dataset(
        ds, seq_length=seq_len, strategy="bfd_split", map_kwargs={"batch_size": len(ds)}
    )
    ours = sequences(pack(starts, lengths, seq_len, "bfd"))
    assert packed["input_ids"] == [[t for s, n in seq for t in range(s, s + n)] for seq in ours]
    assert packed["seq_lengths"] == [[n for _, n in seq] for seq in ours]


# ---------------------------------------------------------------- hand-made cases


def contiguous(lengths, first=1000):
    lengths = np.array(lengths, np.int64)
    return first + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths


def test_bfd_known_bins():
    starts, lengths = contiguous([6, 5, 4, 3, 2], first=0)  # starts 0, 6, 11, 15, 18
    packing = pack(starts, lengths, 10, "bfd")
    assert sequences(packing) == [[(0, 6), (11, 4)], [(6, 5), (15, 3), (18, 2)]]
    stats = pack_stats(starts, lengths, 10, packing)
    assert stats["truncated_documents"] == 0
    assert stats["lower_bound_sequences"] == 2
    assert stats["padding_fraction"] == 0.0


def test_bfd_equal_room_goes_to_bin_that_reached_it_first():
    # L=12: 8 -> A (room 4), 6 -> B (room 6), 5 -> B (room 1), 3 -> A (room 1, later than B),
    # so the first 1 goes to B, although A was opened first, and the second 1 to A
    starts, lengths = contiguous([8, 6, 5, 3, 1, 1], first=0)  # starts 0, 8, 14, 19, 22, 23
    assert sequences(pack(starts, lengths, 12, "bfd")) == [[(0, 8), (19, 3), (23, 1)], [(8, 6), (14, 5), (22, 1)]]


def test_long_document_cut_in_order():
    starts, lengths = np.array([500, 100]), np.array([23, 4])
    assert sequences(pack(starts, lengths, 10, "bfd")) == [[(500, 10)], [(510, 10)], [(100, 4), (520, 3)]]
    assert sequences(pack(starts, lengths, 10, "concat")) == [[(500, 10)], [(510, 10)], [(520, 3), (100, 4)]]


@pytest.mark.parametrize("strategy", ["bfd", "concat"])
def test_single_document_of_exactly_seq_len(strategy):
    packing = pack(np.array([42]), np.array([16]), 16, strategy)
    assert sequences(packing) == [[(42, 16)]]
    stats = pack_stats(np.array([42]), np.array([16]), 16, packing)
    assert stats["truncated_documents"] == 0
    assert stats["padding_fraction"] == 0.0


@pytest.mark.parametrize("strategy", ["bfd", "concat"])
@pytest.mark.parametrize("lengths", [[], [0, 0]], ids=["no-documents", "only-empty-documents"])
def test_empty_input(strategy, lengths):
    starts = np.arange(len(lengths), dtype=np.int64) * 7
    lengths = np.array(lengths, np.int64)
    packing = pack(starts, lengths, 8, strategy)
    assert packing.sequences == 0
    assert len(packing.chunk_starts) == 0
    stats = pack_stats(starts, lengths, 8, packing)
    assert stats["sequences"] == stats["lower_bound_sequences"] == stats["chunks"] == 0
    assert stats["empty_documents"] == len(lengths)


@pytest.mark.parametrize(("seq_len", "strategy"), [(0, "bfd"), (-3, "concat"), (8, "wrapped"), (8, "bfd_split")])
def test_bad_arguments(seq_len, strategy):
    with pytest.raises(ValueError):
        pack(np.array([0]), np.array([5]), seq_len, strategy)
