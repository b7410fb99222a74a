"""FineWeb-2's repetition filter for Mandarin: Gopher's rules with cmn_Hani thresholds, on jieba words.

The definitions are datatrove's ``GopherRepetitionFilter``, so a fraction here means what
FineWeb-2's thresholds were tuned on: duplicate lines and paragraphs by count and by
characters, the most frequent word n-gram's characters, and characters of repeated word
n-grams, all over the document's length. The n-gram counts give datatrove's numbers
(tests compare them) without building a joined string per n-gram and n. Words come from
jieba (Rust port), as datatrove's cmn_Hani tokenizer (spaCy + jieba) gives, without spaCy.
"""

from __future__ import annotations

import re
from dataclasses import field

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from pydantic import PositiveInt

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep
from ctlab.data.textstats import HASH_BASE, codepoints, zh_words

PARAGRAPH_RE = re.compile(r"\n{2,}")
LINE_RE = re.compile(r"\n+")


@config
class RepetitionConfig:
    enabled: bool = True
    dup_line_frac: Fraction | None = 0.287
    dup_para_frac: Fraction | None = None
    dup_line_char_frac: Fraction | None = None
    dup_para_char_frac: Fraction | None = None
    top_ngrams: dict[PositiveInt, Fraction] = field(default_factory=lambda: {2: 0.256, 3: 0.201, 4: 0.171})
    dup_ngrams: dict[PositiveInt, Fraction] = field(
        default_factory=lambda: {5: 0.198, 6: 0.182, 7: 0.167, 8: 0.154, 9: 0.14, 10: 0.127}
    )


class RepetitionFilter(CleaningStep):
    """Reasons as datatrove's: ``dup_line_frac``, ``dup_para_frac``, ``top_<n>_gram``, ``duplicated_<n>_n_grams``..."""

    name = "repetition"

    def __init__(self, config: RepetitionConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = PARAGRAPH_RE.split(text.strip())
        dup_paragraphs, dup_paragraph_chars = find_duplicates(paragraphs)
        if cfg.dup_para_frac and dup_paragraphs / len(paragraphs) > cfg.dup_para_frac:
            return False, "dup_para_frac"
        if cfg.dup_para_char_frac and dup_paragraph_chars / len(text) > cfg.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = LINE_RE.split(text)
        dup_lines, dup_line_chars = find_duplicates(lines)
        if cfg.dup_line_frac and dup_lines / len(lines) > cfg.dup_line_frac:
            return False, "dup_line_frac"
        if cfg.dup_line_char_frac and dup_line_chars / len(text) > cfg.dup_line_char_frac:
            return False, "dup_line_char_frac"
        words = zh_words(text)
        if not words:
            return True
        ids, lengths = _word_ids(words)
        for n, limit in sorted(cfg.top_ngrams.items()):
            if len(words) >= int(n) and top_ngram_chars(ids, lengths, int(n)) / len(text) > limit:
                return False, f"top_{n}_gram"
        concatenation = _PrefixHashes("".join(words))
        starts = np.concatenate(([0], np.cumsum(lengths)))
        for n, limit in sorted(cfg.dup_ngrams.items()):
            if duplicated_ngram_chars(concatenation, starts, int(n)) / len(text) > limit:
                return False, f"duplicated_{n}_n_grams"
        return True


def _word_ids(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) of ``words``: int64 arrays of shape (len(words),); equal words, equal ids."""
    vocabulary = {word: i for i, word in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(vocabulary.__getitem__, words), dtype=np.int64, count=len(words))
    return ids, np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def top_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """datatrove's ``find_top_duplicate(get_n_grams(words, n))``: characters of the most frequent
    word n-gram joined by spaces, times its count; ties go to the n-gram seen first.

    ``ids``, ``lengths``: (W,) word ids and lengths, W >= n.
    """
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)  # (W - n + 1, n)
    vocabulary = int(ids.max()) + 1
    if vocabulary**n < 2**62:  # each n-gram as one exact integer: a 1-D unique is much faster
        keys = windows @ (vocabulary ** np.arange(n - 1, -1, -1, dtype=np.int64))
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    else:
        _, first, counts = np.unique(windows, axis=0, return_index=True, return_counts=True)
    top = counts.max()
    start = int(first[counts == top].min())
    return int(top) * (int(lengths[start : start + n].sum()) + n - 1)


_MASK = (1 << 64) - 1


class _PrefixHashes:
    """Polynomial hashes (mod 2^64) of a string's prefixes, so any substring hashes in O(1), vectorised."""

    def __init__(self, text: str):
        codes = codepoints(text)  # (C,)
        base, inverse = np.uint64(HASH_BASE), np.uint64(pow(HASH_BASE, -1, 1 << 64))
        with np.errstate(over="ignore"):
            one, zero = np.ones(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64)
            self.powers = np.concatenate((one, np.cumprod(np.full(len(codes), base))))  # B^k, k = 0..C
            inverse_powers = np.cumprod(np.full(len(codes), inverse, dtype=np.uint64))  # B^-(t+1)
            # prefix[k] = sum_{t<k} c_t B^(k-1-t) = B^k * sum_{t<k} c_t B^-(t+1)
            self.prefix = self.powers * np.concatenate((zero, np.cumsum(codes * inverse_powers)))

    def substrings(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Hash of text[s:e] for each pair: uint64 array shaped like ``starts``."""
        with np.errstate(over="ignore"):
            return self.prefix[ends] - self.prefix[starts] * self.powers[ends - starts]


def duplicated_ngram_chars(concatenation: _PrefixHashes, starts: np.ndarray, n: int) -> int:
    """datatrove's ``find_all_duplicate(words, n)``: a left-to-right scan that counts the characters
    of each n-gram (its words concatenated) already seen, then jumps past it.

    ``starts``: (W + 1,) offset of each word in the concatenation, then its length. Up to the
    first n-gram that repeats an earlier one the scan only collects, so it starts there.
    """
    count = len(starts) - n
    if count <= 0:
        return 0
    hashes = concatenation.substrings(starts[:count], starts[n:])
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] < np.arange(count))
    if len(repeats) == 0:
        return 0
    ids, sizes = inverse.tolist(), (starts[n:] - starts[:count]).tolist()
    index = int(repeats[0])
    seen = set(ids[:index])
    repeated = 0
    while index < count:
        if ids[index] in seen:
            repeated += sizes[index]
            index += n
        else:
            seen.add(ids[index])
            index += 1
    return repeated
