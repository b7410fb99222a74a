"""Recipe files: overrides applied to a built-in recipe, wrong names, types and values refused."""

import pytest

from ctlab.config import ConfigError
from ctlab.data.recipes import describe, load_recipe


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_overrides_apply_to_the_base(tmp_path):
    recipe = load_recipe(
        write(
            tmp_path,
            "base: fineweb2-zh\nlanguage: {min_zh_score: 1}\nurl: {extra_domains: [spam.cn]}\n"
            "repetition: {top_ngrams: {2: 0.3}}\npii: {email: null}\n",
        )
    )
    assert recipe.name == "recipe"
    assert recipe.language.min_zh_score == 1
    assert recipe.url.extra_domains == ["spam.cn"]
    assert recipe.repetition.top_ngrams == {2: 0.3}
    assert recipe.pii.email is None
    assert recipe.quality == load_recipe("fineweb2-zh").quality  # untouched stages stay the base's
    rows = dict(describe(recipe))
    assert rows["pii"].startswith("email=None, ip=<ip>")
    assert rows["mapcc_rules"] == "off"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("repetition: {top_ngrams: 0.3}", "recipe.yaml: repetition.top_ngrams: must be a mapping, not 0.3"),
        ("url: {extra_domains: bad.example}", "url.extra_domains: must be a list, not 'bad.example'"),
        ("repetition: {top_ngrams: {two: 0.3}}", "repetition.top_ngrams.two: must be a valid integer"),
        ("pii: {enabled: 1}", "pii.enabled: must be a valid boolean, not 1"),
        ("language: {min_zh_score: yes}", "language.min_zh_score: must be a valid number, not True"),
        ("dedup: {bands: 0}", "dedup.bands: must be greater than 0, not 0"),
        ("mapcc_repetition: {max_top_ngram_fraction: {0: 0.2}}", "max_top_ngram_fraction.0: must be greater than 0"),
        ("language: {min_zh_score: 7}", "language.min_zh_score: must be less than or equal to 1, not 7"),
        ("mapcc_rules: {min_chars: 500, max_chars: 100}", "mapcc_rules: min_chars (500) is above max_chars (100)"),
        ("quality: {min_doc_words: 90, max_doc_words: 10}", "quality: min_doc_words is above max_doc_words"),
        ("base: [mapcc]", "unknown base recipe"),
        ("base: nope", "unknown base recipe 'nope'"),
        ("language: {min_zh_scor: 0.5}", "language: unknown field 'min_zh_scor'"),
        ("language: 0.5", "language: must be a mapping, not 0.5"),
        ("- a\n- b\n", "a recipe is a mapping of fields, not list"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_recipe_files_are_refused_with_a_reason(tmp_path, text, message):
    with pytest.raises(ConfigError) as refused:
        load_recipe(write(tmp_path, text))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
