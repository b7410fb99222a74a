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

import copy
import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ctlab.data.dedup import DedupConfig
from ctlab.data.filters.language import LanguageConfig
from ctlab.data.filters.mapcc import MapCCRepetitionConfig, MapCCRulesConfig
from ctlab.data.filters.quality import QualityConfig
from ctlab.data.filters.repetition import RepetitionConfig
from ctlab.data.filters.url import UrlConfig
from ctlab.data.normalize import NormalizeConfig, PIIConfig


class RecipeError(ValueError):
    """An unknown recipe name or an invalid recipe file."""


@dataclass
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


def _apply(obj: Any, overrides: dict, where: str) -> Any:
    """A copy of dataclass ``obj`` with ``overrides`` applied, checking names and types."""
    if not isinstance(overrides, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(overrides).__name__}")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise RecipeError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, f"{where}.{key}")
        else:
            changes[key] = _check_value(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(obj, **changes)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's type (``float | None``, ``dict[int, float]``, ``list[str]``...)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # an int fits a float field; a bool fits neither
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return False


def _check_value(value: Any, hint: Any, where: str) -> Any:
    if not _matches(value, hint):
        expected = hint.__name__ if isinstance(hint, type) else str(hint)
        raise RecipeError(f"{where}: expected {expected}, got {value!r}")
    return value


_AT_LEAST_ONE = {
    "dedup": ("ngram", "bands", "rows"),
    "language": ("chars_checked",),
    "mapcc_rules": ("min_chars", "max_chars", "min_sentences"),
}


def _validate(recipe: Recipe, where: str) -> Recipe:
    """Values every stage needs to make sense; raises :class:`RecipeError`."""
    for stage, names in _AT_LEAST_ONE.items():
        for name in names:
            if getattr(getattr(recipe, stage), name) < 1:
                raise RecipeError(f"{where}: {stage}.{name} must be at least 1")
    for stage, name in (
        ("mapcc_repetition", "max_top_ngram_fraction"),
        ("mapcc_repetition", "max_duplicate_ngram_fraction"),
        ("repetition", "top_ngrams"),
        ("repetition", "dup_ngrams"),
    ):
        if any(n < 1 for n in getattr(getattr(recipe, stage), name)):
            raise RecipeError(f"{where}: {stage}.{name} has an n-gram size below 1")
    return recipe


def load_recipe(spec: str) -> Recipe:
    """A built-in recipe by name, or a YAML file (see the module docstring)."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) or path.exists()):
        raise RecipeError(f"unknown recipe {spec!r} (built-in: {', '.join(BUILTIN)}; or a .yaml file)")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {spec}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{spec}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{spec}: a recipe file is a mapping of stage names to settings")
    data = copy.deepcopy(data)
    base = data.pop("base", "mapcc")
    if not isinstance(base, str) or base not in BUILTIN:
        raise RecipeError(f"{spec}: unknown base recipe {base!r} (built-in: {', '.join(BUILTIN)})")
    data.setdefault("name", path.stem)
    return _validate(_apply(BUILTIN[base](), data, path.name), path.name)


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
