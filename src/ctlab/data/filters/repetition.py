"""FineWeb-2's repetition filter for Mandarin: Gopher's rules with cmn_Hani thresholds, on jieba words.

The definitions are datatrove's ``GopherRepetitionFilter`` (its helper functions are used
directly, so a fraction here means what FineWeb-2's thresholds were tuned on): duplicate
lines and paragraphs by count and by characters, the most frequent word n-gram's characters,
and characters of repeated word n-grams, all over the document's length. Words come from
jieba (Rust port), as datatrove's cmn_Hani tokenizer (spaCy + jieba) gives, without spaCy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datatrove.data import Document
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_duplicates,
    find_top_duplicate,
    get_n_grams,
)

from ctlab.data.steps import CleaningStep
from ctlab.data.textstats import zh_words

PARAGRAPH_RE = re.compile(r"\n{2,}")
LINE_RE = re.compile(r"\n+")


@dataclass
class RepetitionConfig:
    enabled: bool = True
    dup_line_frac: float | None = 0.287
    dup_para_frac: float | None = None
    dup_line_char_frac: float | None = None
    dup_para_char_frac: float | None = None
    top_ngrams: dict[int, float] = field(default_factory=lambda: {2: 0.256, 3: 0.201, 4: 0.171})
    dup_ngrams: dict[int, float] = field(
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
        for n, limit in sorted(cfg.top_ngrams.items()):
            ngrams = get_n_grams(words, int(n))
            if ngrams and find_top_duplicate(ngrams) / len(text) > limit:
                return False, f"top_{n}_gram"
        for n, limit in sorted(cfg.dup_ngrams.items()):
            if find_all_duplicate(words, int(n)) / len(text) > limit:
                return False, f"duplicated_{n}_n_grams"
        return True
