"""textstats' vectorised n-gram statistics against plain-Python definitions.

The references count character *positions*: a position is covered when some occurrence of a
qualifying n-gram spans it; each position counts once, weighted by its unit's length.
"""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctlab.data.textstats import (
    codepoints,
    duplicate_ngram_fraction,
    entropy,
    ngram_hashes,
    top_ngram_fraction,
    zh_words,
)


def char_entropy(text: str) -> float:
    """Entropy of the character distribution, as the MAP-CC rule computes it."""
    return entropy(Counter(text).values(), len(text)) if text else 0.0


# small alphabets so that n-grams repeat; a mix of ASCII, CJK, punctuation and an astral character
ALPHABET = "ab你好。 \U00020000"
texts = st.text(alphabet=ALPHABET, max_size=60)
any_texts = st.text(max_size=80)  # hypothesis' full Unicode range (no surrogates)
ns = st.integers(min_value=1, max_value=10)
VOCAB = ["的", "我们", "中华人民", "a", "hello", "。", "数据清洗"]


def ngrams(units, n):
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def covered_share(units, n, lengths, qualifies):
    """Share of sum(lengths) at positions covered by an n-gram for which ``qualifies(gram)``."""
    total = sum(lengths)
    if total == 0:
        return 0.0
    covered = set()
    for start, gram in enumerate(ngrams(units, n)):
        if qualifies(gram):
            covered.update(range(start, start + n))
    return sum(lengths[i] for i in covered) / total


def reference_top_candidates(units, n, lengths=None):
    """Possible values of the top n-gram fraction: one per n-gram tied for most frequent.

    With a unique most-frequent n-gram this is a single value; ties leave the choice open
    (occurrences of different tied n-grams may overlap differently).
    """
    lengths = [1] * len(units) if lengths is None else list(lengths)
    counts = Counter(ngrams(units, n))
    if not counts or max(counts.values()) < 2:
        return {0.0}
    best = max(counts.values())
    return {
        covered_share(units, n, lengths, lambda gram, top=top: gram == top)
        for top, count in counts.items()
        if count == best
    }


def reference_duplicate(units, n, lengths=None):
    lengths = [1] * len(units) if lengths is None else list(lengths)
    counts = Counter(ngrams(units, n))
    return covered_share(units, n, lengths, lambda gram: counts[gram] >= 2)


def reference_entropy(text):
    if not text:
        return 0.0
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log(c / total) for c in counts.values())


def assert_in_candidates(value, candidates):
    assert any(math.isclose(value, c, rel_tol=1e-12, abs_tol=1e-12) for c in candidates), (value, candidates)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(texts, ns)
def test_top_ngram_fraction_matches_reference_on_characters(text, n):
    value = top_ngram_fraction(codepoints(text), n)
    assert 0.0 <= value <= 1.0
    assert_in_candidates(value, reference_top_candidates(list(text), n))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(texts, ns)
def test_duplicate_ngram_fraction_matches_reference_on_characters(text, n):
    value = duplicate_ngram_fraction(codepoints(text), n)
    assert math.isclose(value, reference_duplicate(list(text), n), rel_tol=1e-12, abs_tol=1e-12)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(any_texts, ns)
def test_fractions_on_arbitrary_unicode(text, n):
    units = codepoints(text)
    assert_in_candidates(top_ngram_fraction(units, n), reference_top_candidates(list(text), n))
    assert math.isclose(duplicate_ngram_fraction(units, n), reference_duplicate(list(text), n), abs_tol=1e-12)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(VOCAB), max_size=40), ns)
def test_fractions_on_words_weighted_by_length(words, n):
    """Word units: each position weighs its word's length in characters."""
    ids = {w: i + 1 for i, w in enumerate(VOCAB)}
    units = np.array([ids[w] for w in words], dtype=np.uint64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    assert_in_candidates(top_ngram_fraction(units, n, lengths), reference_top_candidates(words, n, lengths))
    assert math.isclose(
        duplicate_ngram_fraction(units, n, lengths), reference_duplicate(words, n, lengths), abs_tol=1e-12
    )


@settings(derandomize=True, max_examples=300, deadline=None)
@given(any_texts)
def test_char_entropy_matches_counter_formula(text):
    assert math.isclose(char_entropy(text), reference_entropy(text), rel_tol=1e-9, abs_tol=1e-12)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.text(alphabet=ALPHABET, min_size=1, max_size=60))
def test_duplicate_fraction_bounds_top_fraction(text):
    """The top n-gram's positions are a subset of all duplicated n-grams' positions."""
    units = codepoints(text)
    for n in range(1, 6):
        assert top_ngram_fraction(units, n) <= duplicate_ngram_fraction(units, n) + 1e-12


def test_known_values():
    # "abab": "ab" occurs twice, covering all 4 positions; "ba" once
    assert top_ngram_fraction(codepoints("abab"), 2) == 1.0
    # overlapping occurrences: "aa" three times in "aaaa" covers 4 positions, counted once each
    assert top_ngram_fraction(codepoints("aaaab"), 2) == pytest.approx(4 / 5)
    assert duplicate_ngram_fraction(codepoints("xyzxyz12"), 3) == pytest.approx(6 / 8)
    assert duplicate_ngram_fraction(codepoints("abcdef"), 2) == 0.0
    assert top_ngram_fraction(codepoints("abcdef"), 2) == 0.0  # every n-gram occurs once
    assert top_ngram_fraction(codepoints("ab"), 3) == 0.0  # shorter than n
    assert duplicate_ngram_fraction(codepoints(""), 1) == 0.0
    assert char_entropy("") == 0.0
    assert char_entropy("aaaa") == 0.0
    assert char_entropy("你好世界") == pytest.approx(math.log(4))


def test_ngram_hashes_shape_and_equality():
    units = codepoints("甲乙甲乙丙")
    hashes = ngram_hashes(units, 2)
    assert hashes.shape == (4,)
    assert hashes[0] == hashes[2]  # 甲乙 twice
    assert len(set(hashes.tolist())) == 3
    assert ngram_hashes(units, 6).shape == (0,)
    # order matters: "ab" and "ba" differ
    assert ngram_hashes(codepoints("ab"), 2)[0] != ngram_hashes(codepoints("ba"), 2)[0]


def test_codepoints_handles_astral_characters():
    units = codepoints("a\U00020000b")
    assert units.tolist() == [ord("a"), 0x20000, ord("b")]
    assert units.dtype == np.uint64


def test_zh_words_strips_whitespace_tokens():
    words = zh_words("我们 今天\n去北京。")
    assert all(w and w == w.strip() for w in words)
    assert "".join(words) == "我们今天去北京。"
    assert "我们" in words
