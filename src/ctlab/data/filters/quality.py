"""FineWeb-2's quality filters for Mandarin: Gopher quality and FineWeb quality, cmn_Hani thresholds.

Definitions follow datatrove's ``GopherQualityFilter`` and ``FineWebQualityFilter`` with
words from jieba (not English whitespace words, which would drop nearly every Chinese page):
average word length over non-symbol words, hash and ellipsis per word, bullet and ellipsis
lines, the share of words with a letter, Chinese stop words; lines ending in punctuation,
characters in duplicated lines and newlines per word.
"""

from __future__ import annotations

from dataclasses import field
from itertools import filterfalse

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET as _PUNCTUATION
from datatrove.utils.text import TERMINAL_PUNCTUATION
from pydantic import NonNegativeFloat, NonNegativeInt, model_validator

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep
from ctlab.data.textstats import zh_words

STOP_WORDS = [
    "的",
    "年",
    "在",
    "月",
    "是",
    "和",
    "日",
    "了",
    "於",
    "·",
    "為",
    "有",
    "被",
    "人",
    "中",
    "为",
    "他",
    "與",
    "後",
    "也",
    "而",
    "由",
]
LINE_ENDINGS = tuple(TERMINAL_PUNCTUATION)
PUNCTUATION_SET = frozenset(_PUNCTUATION)


@config
class QualityConfig:
    enabled: bool = True
    # Gopher quality
    min_doc_words: NonNegativeInt | None = 50
    max_doc_words: NonNegativeInt | None = 100000
    min_avg_word_length: NonNegativeFloat | None = 1
    max_avg_word_length: NonNegativeFloat | None = 5
    max_symbol_word_ratio: NonNegativeFloat | None = 0.1
    max_bullet_lines_ratio: Fraction | None = 0.9
    max_ellipsis_lines_ratio: Fraction | None = 0.3
    min_alpha_words_ratio: Fraction | None = 0.735
    min_stop_words: NonNegativeInt | None = 2
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))
    # FineWeb quality
    min_line_punct_ratio: Fraction | None = 0.106
    line_punct_exclude_zero: bool = False
    max_short_line_ratio: Fraction | None = None
    short_line_length: NonNegativeInt = 30
    max_char_duplicates_ratio: Fraction | None = 0.1
    max_new_line_ratio: NonNegativeFloat | None = 0.178

    @model_validator(mode="after")
    def _ranges(self) -> QualityConfig:
        for low, high in (("min_doc_words", "max_doc_words"), ("min_avg_word_length", "max_avg_word_length")):
            if None not in (getattr(self, low), getattr(self, high)) and getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} is above {high}")
        return self


class QualityFilter(CleaningStep):
    """Reasons are datatrove's: ``line_punct_ratio``, ``short_line_ratio``, ``char_dup_ratio``,
    ``list_ratio``, then the ``gopher_*`` names."""

    name = "quality"

    def __init__(self, config: QualityConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config
        self._stop_words = frozenset(config.stop_words)

    def gopher(self, text: str, words: list[str]) -> bool | tuple[bool, str]:
        cfg = self.config
        n_words = len(words)
        if n_words == 0:
            return False, "gopher_short_doc"
        non_symbol = list(filterfalse(PUNCTUATION_SET.issuperset, words))
        if cfg.min_doc_words and len(non_symbol) < cfg.min_doc_words:
            return False, "gopher_short_doc"
        if cfg.max_doc_words and len(non_symbol) > cfg.max_doc_words:
            return False, "gopher_long_doc"
        avg = float(np.mean([len(w) for w in non_symbol])) if non_symbol else 0.0
        if cfg.min_avg_word_length and avg < cfg.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if cfg.max_avg_word_length and avg > cfg.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if cfg.max_symbol_word_ratio and text.count("#") / n_words > cfg.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if cfg.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines() or [""]
        bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines)
        if cfg.max_bullet_lines_ratio and bullets / len(lines) > cfg.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
        ellipsis = sum(s.rstrip().endswith(("...", "…")) for s in lines)
        if cfg.max_ellipsis_lines_ratio and ellipsis / len(lines) > cfg.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"
        not_all_letters = list(filterfalse(str.isalpha, words))  # most words are letters only
        alpha = len(words) - len(not_all_letters) + sum(any(c.isalpha() for c in w) for w in not_all_letters)
        if cfg.min_alpha_words_ratio and alpha / n_words < cfg.min_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if cfg.min_stop_words and len(self._stop_words.intersection(words)) < cfg.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True

    def fineweb(self, text: str, words: list[str]) -> bool | tuple[bool, str]:
        cfg = self.config
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return False, "empty"
        ratio = sum(line.endswith(LINE_ENDINGS) for line in lines) / len(lines)
        if (
            cfg.min_line_punct_ratio
            and ratio < cfg.min_line_punct_ratio
            and not (ratio == 0 and cfg.line_punct_exclude_zero)
        ):
            return False, "line_punct_ratio"
        short = sum(len(line) <= cfg.short_line_length for line in lines) / len(lines)
        if cfg.max_short_line_ratio and short > cfg.max_short_line_ratio:
            return False, "short_line_ratio"
        non_newline_chars = len(text.replace("\n", ""))
        if cfg.max_char_duplicates_ratio and non_newline_chars:
            if find_duplicates(lines)[1] / non_newline_chars > cfg.max_char_duplicates_ratio:
                return False, "char_dup_ratio"
        if cfg.max_new_line_ratio and words and text.count("\n") / len(words) > cfg.max_new_line_ratio:
            return False, "list_ratio"
        return True

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        words = zh_words(doc.text)
        result = self.fineweb(doc.text, words)  # FineWeb-2's order: FineWeb quality, then Gopher quality
        return self.gopher(doc.text, words) if result is True else result
