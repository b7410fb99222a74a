"""CT-LLM's MAP-CC rule set: document-level heuristics and character n-gram repetition.

Definitions and thresholds follow MAP-CC's ``filter.py`` (run after its format stage, so
full-width punctuation is already ASCII). Upstream defects are fixed here:

- the repetition rule rejects (upstream tests a tuple, which is always true: it never fires);
- duplicate n-gram fractions count the character *positions* covered by repeated n-grams
  (upstream counts the distinct characters in them for n ≥ 5);
- the read-more rule also matches "..." (upstream looks for "。。。", which its own
  punctuation mapping has already turned into "...").

Each rule drops with its own reason, so ``stats.json`` shows which rule removed what.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import field

from datatrove.data import Document
from pydantic import NonNegativeFloat, PositiveInt, model_validator

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep
from ctlab.data.textstats import codepoints, duplicate_ngram_fraction, entropy, top_ngram_fraction, zh_words

# sentence ends after the format stage, plus their full-width forms for recipes without it
SENTENCE_END_RE = re.compile(r"[.!…?;\"。！？；“”]+")
# MAP-CC's punctuation set (ASCII marks and …), plus CJK marks for recipes without the mapping
PUNCTUATION = frozenset(string.punctuation + "…、，。！？；：“”‘’（）【】《》「」『』·～")
NOT_WORD_RE = re.compile(r"[^\w\s]")
HASH_RUN_RE = re.compile(r"#+")
ELLIPSIS_RUN_RE = re.compile(r"…+|\.{2,}")
READMORE_ENDINGS = ("readmore", "展开", "更多", "。。。", "...")
BULLETS = tuple("•●○■□▪▫※·➢‣▶◀◦–")
WHITESPACE_RE = re.compile(r"\s+")


@config
class MapCCRulesConfig:
    enabled: bool = True
    min_chars: PositiveInt = 50
    max_chars: PositiveInt = 10000
    min_sentences: PositiveInt = 2
    min_mean_word_length: NonNegativeFloat = 1.3
    max_mean_word_length: NonNegativeFloat = 10.0
    max_hash_ratio: Fraction = 0.1
    max_ellipsis_ratio: Fraction = 0.1
    max_digit_ratio: Fraction = 0.3
    max_readmore_line_ratio: Fraction = 0.3
    max_bullet_line_ratio: Fraction = 0.9
    require_punctuation: bool = True
    min_unique_char_ratio: Fraction = 0.1
    min_char_entropy: NonNegativeFloat = 3.0

    @model_validator(mode="after")
    def _ranges(self) -> MapCCRulesConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("min_mean_word_length is above max_mean_word_length")
        return self


class MapCCRules(CleaningStep):
    """MAP-CC's document rules. Reasons: ``too_short``, ``too_long``, ``few_sentences``, ``hash_ratio``,
    ``ellipsis_ratio``, ``digit_ratio``, ``readmore_lines``, ``bullet_lines``, ``no_punctuation``,
    ``unique_chars``, ``low_entropy``, ``mean_word_length``."""

    name = "mapcc-rules"

    def __init__(self, config: MapCCRulesConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        text = doc.text
        n_chars = len(text)
        if n_chars < cfg.min_chars:
            return False, "too_short"
        if n_chars > cfg.max_chars:
            return False, "too_long"
        sentences = [s for s in SENTENCE_END_RE.split(text) if s.strip()]
        if len(sentences) < cfg.min_sentences:
            return False, "few_sentences"
        if len(HASH_RUN_RE.findall(text)) / n_chars > cfg.max_hash_ratio:
            return False, "hash_ratio"
        if len(ELLIPSIS_RUN_RE.findall(text)) / n_chars > cfg.max_ellipsis_ratio:
            return False, "ellipsis_ratio"
        counts = Counter(text)  # one pass gives the character-class counts, uniqueness and entropy
        symbols = sum(c for ch, c in counts.items() if NOT_WORD_RE.match(ch))  # neither \w nor whitespace
        digits = sum(c for ch, c in counts.items() if ch.isdigit())
        if n_chars > symbols and digits / (n_chars - symbols) > cfg.max_digit_ratio:
            return False, "digit_ratio"
        lines = text.splitlines() or [text]
        if sum(line.endswith(READMORE_ENDINGS) for line in lines) / len(lines) > cfg.max_readmore_line_ratio:
            return False, "readmore_lines"
        if sum(line.startswith(BULLETS) for line in lines) / len(lines) > cfg.max_bullet_line_ratio:
            return False, "bullet_lines"
        if cfg.require_punctuation and not any(ch in PUNCTUATION for ch in counts):
            return False, "no_punctuation"
        if len(counts) / n_chars <= cfg.min_unique_char_ratio:
            return False, "unique_chars"
        if entropy(counts.values(), n_chars) < cfg.min_char_entropy:
            return False, "low_entropy"
        words = zh_words(NOT_WORD_RE.sub("", text))
        mean_length = sum(map(len, words)) / len(words) if words else 0.0
        if not cfg.min_mean_word_length <= mean_length <= cfg.max_mean_word_length:
            return False, "mean_word_length"
        return True


def _default_top():
    return {2: 0.20, 3: 0.18, 4: 0.16}


def _default_dup():
    return {n: 0.60 for n in range(5, 11)}


@config
class MapCCRepetitionConfig:
    enabled: bool = True
    max_top_ngram_fraction: dict[PositiveInt, Fraction] = field(default_factory=_default_top)
    max_duplicate_ngram_fraction: dict[PositiveInt, Fraction] = field(default_factory=_default_dup)


class MapCCRepetition(CleaningStep):
    """Character n-gram repetition over the text without whitespace.

    ``top_<n>_gram``: the most frequent n-gram covers more than its threshold of the characters;
    ``dup_<n>_gram``: n-grams occurring twice or more cover more than theirs.
    """

    name = "mapcc-repetition"

    def __init__(self, config: MapCCRepetitionConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        units = codepoints(WHITESPACE_RE.sub("", doc.text))
        for n, limit in sorted(self.config.max_top_ngram_fraction.items()):
            if top_ngram_fraction(units, int(n)) > limit:
                return False, f"top_{n}_gram"
        limits = sorted((int(n), limit) for n, limit in self.config.max_duplicate_ngram_fraction.items())
        for i, (n, limit) in enumerate(limits):
            fraction = duplicate_ngram_fraction(units, n)
            if fraction > limit:
                return False, f"dup_{n}_gram"
            # the fraction cannot grow with n (a repeated (n+1)-gram starts with a repeated n-gram),
            # so once it is under every remaining limit, no longer n-gram can fail
            if fraction <= min(rest for _, rest in limits[i:]):
                break
        return True
