"""Fast text statistics shared by the rule filters: n-gram repetition, entropy, word splitting.

Repetition rules look at every n-gram of a document for several n; done with Python
dicts this dominates a cleaning run. Here a sequence (characters or words) becomes an
integer array and each n-gram a 64-bit polynomial hash computed with a few vector
operations, so the statistics of a document cost microseconds per n.

Fractions count *positions*: a character covered by several duplicated n-grams counts once.
"""

from __future__ import annotations

import numpy as np
import rjieba

HASH_BASE = 0x100000001B3  # odd, so invertible modulo 2^64


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text``: uint64 array of shape (len(text),)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-gram of ``units`` (uint64, shape (L,)): uint64 array of shape (max(L-n+1, 0),)."""
    count = len(units) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = units[:count].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            h = h * np.uint64(HASH_BASE) + units[j : j + count] + np.uint64(j)
    return h


def _occurrence_counts(hashes: np.ndarray) -> np.ndarray:
    """For each position, how often its n-gram occurs in the whole sequence: shape like ``hashes``."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return counts[inverse]


def _covered(starts: np.ndarray, n: int, lengths: np.ndarray) -> np.ndarray:
    """Boolean mask over units covered by an n-gram starting at one of ``starts`` (bool, shape (L,))."""
    delta = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + n, -1)
    return np.cumsum(delta[:-1]) > 0


def top_ngram_fraction(units: np.ndarray, n: int, lengths: np.ndarray | None = None) -> float:
    """Share of the text (in characters) covered by the most frequent n-gram's occurrences.

    ``units``: (L,) uint64 ids of characters or words; ``lengths``: (L,) characters per unit
    (None: one character each). An n-gram that occurs once has fraction 0.
    """
    lengths = np.ones(len(units), dtype=np.int64) if lengths is None else lengths
    hashes = ngram_hashes(units, n)
    total = int(lengths.sum())
    if len(hashes) == 0 or total == 0:
        return 0.0
    values, counts = np.unique(hashes, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 2:
        return 0.0
    starts = np.flatnonzero(hashes == values[best])
    return float(lengths[_covered(starts, n, lengths)].sum()) / total


def duplicate_ngram_fraction(units: np.ndarray, n: int, lengths: np.ndarray | None = None) -> float:
    """Share of the text (in characters) covered by n-grams that occur more than once.

    Same arguments as :func:`top_ngram_fraction`; each position counts once however many
    duplicated n-grams cover it.
    """
    lengths = np.ones(len(units), dtype=np.int64) if lengths is None else lengths
    hashes = ngram_hashes(units, n)
    total = int(lengths.sum())
    if len(hashes) == 0 or total == 0:
        return 0.0
    starts = np.flatnonzero(_occurrence_counts(hashes) > 1)
    if len(starts) == 0:
        return 0.0
    return float(lengths[_covered(starts, n, lengths)].sum()) / total


def entropy(counts, total: int) -> float:
    """Shannon entropy (natural log) of a distribution given as counts summing to ``total``."""
    p = np.fromiter(counts, dtype=np.float64) / total
    return float(-(p * np.log(p)).sum())


def remember_last(function):
    """Cache the result for the last argument (by identity): consecutive stages ask about the same text."""
    last: list = [None, None]

    def cached(text: str):
        if last[0] is not text:
            last[0], last[1] = text, function(text)
        return last[1]

    cached.__doc__ = function.__doc__
    cached.__name__ = function.__name__
    return cached


@remember_last
def zh_words(text: str) -> list[str]:
    """Words of ``text`` by jieba (jieba-rs, the Rust port with jieba's dictionary and HMM),
    stripped, without whitespace tokens: what datatrove's cmn_Hani word tokenizer yields."""
    return [w for w in map(str.strip, rjieba.cut(text)) if w]
