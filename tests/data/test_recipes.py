"""Recipe files: overrides applied to a built-in recipe, wrong names, types and values refused."""

import pytest

from ctlab.data.recipes import RecipeError, describe, load_recipe


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
        ("repetition: {top_ngrams: 0.3}", "expected dict[int, float], got 0.3"),
        ("url: {extra_domains: bad.example}", "expected list[str], got 'bad.example'"),
        ("repetition: {top_ngrams: {two: 0.3}}", "expected dict[int, float]"),
        ("pii: {enabled: 1}", "expected bool, got 1"),
        ("language: {min_zh_score: yes}", "got True"),
        ("dedup: {bands: 0}", "dedup.bands must be at least 1"),
        ("mapcc_repetition: {max_top_ngram_fraction: {0: 0.2}}", "n-gram size below 1"),
        ("base: [mapcc]", "unknown base recipe"),
        ("base: nope", "unknown base recipe 'nope'"),
        ("language: {min_zh_scor: 0.5}", "unknown field 'min_zh_scor'"),
        ("language: 0.5", "expected a mapping"),
        ("- a\n- b\n", "a recipe file is a mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_recipe_files_are_refused_with_a_reason(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write(tmp_path, text))


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
