"""Recipes: which cleaning stages run, in which order, with which thresholds.

A recipe is one dataclass of per-stage configs; the stage order is fixed (normalise →
URL → language → MAP-CC rules → MAP-CC repetition → repetition → quality → PII → similar
lines → dedup) and each stage can be switched off. Two are built in:

- ``mapcc``: CT-LLM's MAP-CC rules (with the upstream bugs fixed);
- ``fineweb2-zh``: FineWeb-2's Mandarin (cmn_Hani) thresholds over jieba words.

Both deduplicate with MinHash on character 5-grams, 14 bands × 8 rows (``DedupConfig``'s
defaults); ``configs/mapcc-ctllm-minhash.yaml`` restores CT-LLM's 13-grams, 9 × 13.

A user recipe is YAML: ``base:`` names a built-in recipe, every other key overrides a field::

    base: mapcc
    language: {min_zh_score: 0.6}
    dedup: {bands: 20, rows: 5}
    pii: {enabled: false}
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any

from ctlab.config import ConfigError, config, overlay, parse, read_yaml
from ctlab.data.dedup import DedupConfig
from ctlab.data.filters.language import LanguageConfig
from ctlab.data.filters.mapcc import MapCCRepetitionConfig, MapCCRulesConfig
from ctlab.data.filters.quality import QualityConfig
from ctlab.data.filters.repetition import RepetitionConfig
from ctlab.data.filters.url import UrlConfig
from ctlab.data.normalize import NormalizeConfig, PIIConfig


@config
class Recipe:
    name: str = "custom"
    description: str = ""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    url: UrlConfig = field(default_factory=UrlConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    mapcc_rules: MapCCRulesConfig = field(default_factory=MapCCRulesConfig)
    mapcc_repetition: MapCCRepetitionConfig = field(default_factory=MapCCRepetitionConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mapcc() -> Recipe:
    return Recipe(
        name="mapcc",
        description="CT-LLM's MAP-CC cleaning rules (upstream bugs fixed), MinHash 5-grams 14x8",
        language=LanguageConfig(min_zh_score=0.4),
        repetition=RepetitionConfig(enabled=False),
        quality=QualityConfig(enabled=False),
    )


def _fineweb2_zh() -> Recipe:
    return Recipe(
        name="fineweb2-zh",
        description="FineWeb-2 Mandarin (cmn_Hani) thresholds on jieba words, MinHash 5-grams 14x8",
        normalize=NormalizeConfig(max_bracket_ratio=None, punctuation_to_halfwidth=False, strip_links=False),
        language=LanguageConfig(min_zh_score=0.692),
        mapcc_rules=MapCCRulesConfig(enabled=False),
        mapcc_repetition=MapCCRepetitionConfig(enabled=False),
    )


BUILTIN = {"mapcc": _mapcc, "fineweb2-zh": _fineweb2_zh}


def load_recipe(spec: str) -> Recipe:
    """A built-in recipe by name, or a YAML file (see the module docstring); a
    :class:`ConfigError` names what is wrong."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if not (spec.endswith((".yaml", ".yml")) or Path(spec).exists()):
        raise ConfigError(f"unknown recipe {spec!r} (built-in: {', '.join(BUILTIN)}; or a .yaml file)")
    data = read_yaml(spec, "recipe")
    base = data.pop("base", "mapcc")
    if not isinstance(base, str) or base not in BUILTIN:
        raise ConfigError(f"{spec}: unknown base recipe {base!r} (built-in: {', '.join(BUILTIN)})")
    data.setdefault("name", Path(spec).stem)
    return parse(Recipe, overlay(BUILTIN[base](), data), Path(spec).name)


def describe(recipe: Recipe) -> list[tuple[str, str]]:
    """(stage, settings) rows for ``ctlab data recipes``: enabled stages and their thresholds."""
    rows = []
    for f in dataclasses.fields(recipe):
        config = getattr(recipe, f.name)
        if not dataclasses.is_dataclass(config):
            continue
        settings = dataclasses.asdict(config)
        if not settings.pop("enabled", True):
            rows.append((f.name, "off"))
            continue
        rows.append((f.name, ", ".join(f"{k}={v}" for k, v in settings.items())))
    return rows
