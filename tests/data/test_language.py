"""ChineseLanguageFilter: real Chinese news stays, English prose, Japanese and number tables go."""

import pytest
from datatrove.data import Document

from ctlab.data.filters.language import ChineseLanguageFilter, LanguageConfig, han_ratio

ENGLISH = (
    "The committee met on Tuesday to discuss the budget for the coming year. "
    "Several members raised concerns about rising maintenance costs for the old library building. "
    "After a long debate, they agreed to postpone the final vote until next month."
)
JAPANESE = (
    "東京都は日本の首都であり、多くの人々が住んでいます。昨日、私は友達と一緒に新しい美術館を訪れました。"
    "展示された作品はとても美しく、深く感動しました。"
)
STOCK_TABLE = "上证指数 3245.67 +1.23%\n深证成指 10234.56 -0.45%\n创业板指 2134.78 +0.89%\n恒生指数 17890.12 +0.32%\n"


@pytest.fixture(scope="module")
def language_filter():
    return ChineseLanguageFilter(LanguageConfig())


def run(step, text):
    doc = Document(text=text, id="doc")
    return step.process(doc), doc


def test_real_chinese_news_is_kept(language_filter, inews):
    articles = [text for _, text in inews[:120] if len(text) >= 100]
    assert len(articles) > 80
    for text in articles:
        result, doc = run(language_filter, text)
        assert result is True, (result, text[:80])
        assert doc.metadata["language_score"] >= 0.4


def test_english_prose_is_dropped(language_filter):
    assert han_ratio(ENGLISH) == 0.0
    assert run(language_filter, ENGLISH)[0] == (False, "low_han_ratio")
    # a Chinese title above English prose is still not a Chinese document
    assert run(language_filter, "新闻标题：预算会议\n" + ENGLISH)[0] == (False, "low_han_ratio")


def test_english_prose_rejected_by_identifier_when_han_ratio_disabled(language_filter, monkeypatch):
    step = language_filter  # reuses the loaded identifier; the config is swapped for this test only
    monkeypatch.setattr(step, "config", LanguageConfig(min_han_ratio=0.0))
    result, doc = run(step, ENGLISH)
    assert result == (False, "not_zh")
    assert doc.metadata["language_score"] > 0.9
    assert step.identify(ENGLISH)[0] == "en"


def test_japanese_with_many_kanji_is_not_zh(language_filter):
    # enough kanji to pass the Han ratio; the identifier must catch it
    assert han_ratio(JAPANESE) >= 0.3
    assert run(language_filter, JAPANESE)[0] == (False, "not_zh")


def test_number_table_dropped_for_low_han_ratio(language_filter):
    assert han_ratio(STOCK_TABLE) < 0.3
    result, doc = run(language_filter, STOCK_TABLE)
    assert result == (False, "low_han_ratio")
    assert "language_score" not in doc.metadata  # decided before the identifier ran


def test_low_zh_score_threshold(language_filter, monkeypatch):
    # mixed text that is still labelled Chinese fails a strict score requirement on the score, not the label
    monkeypatch.setattr(language_filter, "config", LanguageConfig(min_zh_score=0.999, min_han_ratio=0.1))
    mixed = "近日南宁 police 侦破了 case。"
    assert language_filter.identify(mixed)[0] == "zh"
    assert run(language_filter, mixed)[0] == (False, "low_zh_score")


def test_han_ratio_ignores_whitespace():
    assert han_ratio("中文 abc\n") == pytest.approx(2 / 5)
    assert han_ratio("   ") == 0.0
    assert han_ratio("") == 0.0
    assert han_ratio("𠀀中") == 1.0  # CJK extension B counts as Han


def test_identify_equals_langid_classify(language_filter, inews):
    """The sparse naive-Bayes product gives langid's own label and normalised probability."""
    from langid.langid import LanguageIdentifier, model

    reference = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    texts = [text for _, text in inews[:60]] + [ENGLISH, JAPANESE, STOCK_TABLE, "Bonjour, je suis très content."]
    for text in texts:
        label, score = language_filter.identify(text)
        ref_label, ref_score = reference.classify(text[: language_filter.config.chars_checked])
        assert label == ref_label
        assert score == pytest.approx(float(ref_score), abs=1e-5)


def test_cached_model_gives_langid_results(tmp_path, monkeypatch, inews):
    """The model arrays cached as .npz load into an identifier equal to langid's own."""
    from ctlab.data.filters import language

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    language.langid_identifier.cache_clear()
    try:
        built = language.langid_identifier()  # unpacks langid's model, writes the cache
        assert list(tmp_path.glob("ctlab/langid-*.npz"))
        language.langid_identifier.cache_clear()
        loaded = language.langid_identifier()  # from the cache
        assert loaded is not built
        for text in [t for _, t in inews[:20]] + [ENGLISH, JAPANESE]:
            assert loaded.classify(text) == built.classify(text)
    finally:
        language.langid_identifier.cache_clear()
