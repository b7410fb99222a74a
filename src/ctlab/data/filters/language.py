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

import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from datatrove.data import Document
from pydantic import PositiveInt

from ctlab.config import Fraction, config
from ctlab.data.steps import CleaningStep

HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
SPACE_RE = re.compile(r"\s")


def han_ratio(text: str) -> float:
    """Han characters / non-whitespace characters (0 for an empty text)."""
    visible = len(text) - len(SPACE_RE.findall(text))
    return len(HAN_RE.findall(text)) / visible if visible else 0.0


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctlab"


@lru_cache(maxsize=1)
def langid_identifier():
    """langid's identifier with its bundled model, once per process.

    Unpacking the model string (base64, bz2, pickle) takes ~1.5 s; its arrays are cached as
    ``.npz`` (no pickle) under ``$XDG_CACHE_HOME/ctlab`` and loaded from there afterwards.
    """
    import langid
    from langid.langid import LanguageIdentifier, model

    cache = _cache_dir() / f"langid-{langid.__version__ if hasattr(langid, '__version__') else len(model)}.npz"
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            ptc, pc, classes = arrays["nb_ptc"], arrays["nb_pc"], arrays["nb_classes"].tolist()
            nextmove = arrays["tk_nextmove"].tolist()
            states, offsets, indices = arrays["out_states"], arrays["out_offsets"], arrays["out_indices"]
            output = {
                int(state): tuple(indices[offsets[i] : offsets[i + 1]].tolist()) for i, state in enumerate(states)
            }
        return LanguageIdentifier(ptc, pc, ptc.shape[0], classes, nextmove, output, norm_probs=True)
    except (OSError, KeyError, ValueError):
        pass
    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    states = sorted(identifier.tk_output)
    lists = [identifier.tk_output[state] for state in states]
    try:  # a read-only cache only costs the unpacking again
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.npz")
        np.savez(
            partial,
            nb_ptc=identifier.nb_ptc,
            nb_pc=identifier.nb_pc,
            nb_classes=np.array(identifier.nb_classes),
            tk_nextmove=np.asarray(identifier.tk_nextmove, dtype=np.int64),
            out_states=np.array(states, dtype=np.int64),
            out_offsets=np.cumsum([0, *map(len, lists)]),
            out_indices=np.array([i for indices in lists for i in indices], dtype=np.int64),
        )
        os.replace(partial, cache)
    except OSError:
        pass
    return identifier


@config
class LanguageConfig:
    enabled: bool = True
    min_zh_score: Fraction = 0.4
    min_han_ratio: Fraction = 0.3
    chars_checked: PositiveInt = 600  # the identifier reads this many leading characters


class ChineseLanguageFilter(CleaningStep):
    """Drops with reason ``not_zh`` (other top language), ``low_zh_score`` or ``low_han_ratio``."""

    name = "language"

    def __init__(self, config: LanguageConfig, rejects_folder: str | None = None):
        super().__init__(rejects_folder)
        self.config = config

    def identify(self, text: str) -> tuple[str, float]:
        """(top language code, its probability) for the leading ``chars_checked`` characters."""
        identifier = langid_identifier()
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
