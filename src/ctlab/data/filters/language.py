"""Keep Chinese documents: an offline language identifier plus a Han-character ratio.

langid.py ships its model inside the package (no download at run time) and gives a
normalised probability per language. Its features are extracted by langid itself; the
naive-Bayes product is taken over the document's non-zero features only, which gives
langid's result (``classify`` with ``norm_probs``) without its dense product over all
7,480 features, the larger part of its cost. A document stays when its top label is ``zh`` with
probability at least ``min_zh_score`` *and* Han characters make up at least
``min_han_ratio`` of its non-space characters (the identifier alone lets through pages of
English or numbers with a Chinese title).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from datatrove.data import Document

from ctlab.data.steps import CleaningStep

HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
SPACE_RE = re.compile(r"\s")


def han_ratio(text: str) -> float:
    """Han characters / non-whitespace characters (0 for an empty text)."""
    visible = len(text) - len(SPACE_RE.findall(text))
    return len(HAN_RE.findall(text)) / visible if visible else 0.0


@dataclass
class LanguageConfig:
    enabled: bool = True
    min_zh_score: float = 0.4
    min_han_ratio: float = 0.3
    chars_checked: int = 600  # the identifier reads this many leading characters


class ChineseLanguageFilter(CleaningStep):
    """Drops with reason ``not_zh`` (other top language), ``low_zh_score`` or ``low_han_ratio``."""

    name = "language"

    def __init__(self, config: LanguageConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config
        self._identifier = None

    def identify(self, text: str) -> tuple[str, float]:
        """(top language code, its probability) for the leading ``chars_checked`` characters."""
        if self._identifier is None:
            from langid.langid import LanguageIdentifier, model

            self._identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
        identifier = self._identifier
        features = identifier.instance2fv(text[: self.config.chars_checked])  # (7480,) counts
        present = np.flatnonzero(features)
        log_probs = features[present] @ identifier.nb_ptc[present] + identifier.nb_pc  # (97,)
        probs = np.exp(log_probs - log_probs.max())
        best = int(np.argmax(probs))
        return identifier.nb_classes[best], float(probs[best] / probs.sum())

    def process(self, doc: Document) -> bool | tuple[bool, str]:
        if han_ratio(doc.text) < self.config.min_han_ratio:
            return False, "low_han_ratio"
        label, score = self.identify(doc.text)
        doc.metadata["language_score"] = round(score, 4)
        if label != "zh":
            return False, "not_zh"
        if score < self.config.min_zh_score:
            return False, "low_zh_score"
        return True
