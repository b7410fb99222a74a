"""ctlab's FineWeb-2 stages decide exactly as datatrove's own filters do with the same thresholds.

datatrove's filters split words with ``split_into_words``; here it is replaced by ctlab's
``zh_words`` (jieba), so any difference is a difference in the rules themselves.
"""

import dataclasses

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import fineweb_quality_filter, gopher_quality_filter, gopher_repetition_filter
from datatrove.pipeline.filters.fineweb_quality_filter import FineWebQualityFilter
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter

from ctlab.data.filters.quality import QualityConfig, QualityFilter
from ctlab.data.filters.repetition import RepetitionConfig, RepetitionFilter
from ctlab.data.recipes import load_recipe
from ctlab.data.textstats import zh_words

N_ARTICLES = 300
SENTENCES = [
    "今天天气很好，我们一起去公园散步。",
    "市政府召开新闻发布会，介绍了今年的经济发展情况。",
    "专家表示，这一政策将有助于促进消费和扩大内需。",
    "记者从市交通局获悉，地铁三号线将于年底开通运营。",
    "据了解，该项目总投资约为二十亿元，预计明年完工。",
    "学校的老师和学生们在操场上举行了升旗仪式。",
]


NOUNS = ("苹果", "老师", "学生")


def _junk() -> list[str]:
    body = "".join(SENTENCES)
    return [
        # repeated lines and paragraphs
        "\n".join(["点击领取优惠券，限时抢购！"] * 12 + SENTENCES),
        "\n\n".join([body] * 3 + ["扫码关注公众号。"] * 4),
        "\n".join(SENTENCES * 5),
        body + "\n" + "\n".join(["更多精彩内容，请关注我们的官方网站。"] * 3),
        # lists: bullets, short lines, many newlines
        "\n".join(f"• 第{i}条：{s}" for i, s in enumerate(SENTENCES * 3)),
        "\n".join(f"- {s[:6]}" for s in SENTENCES * 4),
        "\n".join(["首页", "新闻", "财经", "体育", "娱乐", "科技", "汽车", "房产", "教育", "登录"] * 3) + "\n" + body,
        "\n".join(f"{i}. {s}" for i, s in enumerate(SENTENCES * 4)),
        # one short sentence a line: many newlines per word
        "\n".join(f"{a}{b}{c}。" for a in ("我们", "你们", "他们") for b in ("喜欢", "讨厌", "看见") for c in NOUNS)
        + "\n我的家是在北京的。",
        # ellipsis and hashes
        "\n".join(s[:-1] + "……" for s in SENTENCES * 3),
        "\n".join("#" + s[:8] + "# " + s for s in SENTENCES * 3),
        # numbers and tables: few alphabetic words
        "\n".join(f"上证指数 {3000 + i}.{i:02d} +{i}.{i}% 成交 {i * 37}亿" for i in range(40)),
        # no stop words, no terminal punctuation, English
        "人工智能 机器学习 深度学习 神经网络 自然语言处理 计算机视觉 " * 12,
        "The committee met on Tuesday to discuss the budget for the coming year. " * 10,
        # words repeated without line structure
        "新品上市新品上市特价优惠特价优惠" * 10 + body,
        body * 4,
        body,
        "",
        "\n\n\n",
    ]


@pytest.fixture(scope="module")
def documents(inews):
    texts = [text for _, text in inews[:N_ARTICLES]] + _junk()
    return texts


@pytest.fixture
def zh_split(monkeypatch):
    """datatrove's filters with ctlab's word splitting."""
    split = lambda text, language=None: zh_words(text)  # noqa: E731
    for module in (gopher_repetition_filter, gopher_quality_filter, fineweb_quality_filter):
        monkeypatch.setattr(module, "split_into_words", split)


def datatrove_repetition(cfg: RepetitionConfig) -> GopherRepetitionFilter:
    return GopherRepetitionFilter(
        dup_line_frac=cfg.dup_line_frac,
        dup_para_frac=cfg.dup_para_frac,
        dup_line_char_frac=cfg.dup_line_char_frac,
        dup_para_char_frac=cfg.dup_para_char_frac,
        top_n_grams=tuple(sorted(cfg.top_ngrams.items())),
        dup_n_grams=tuple(sorted(cfg.dup_ngrams.items())),
        language="cmn_Hani",
    )


def datatrove_quality(cfg: QualityConfig) -> tuple[GopherQualityFilter, FineWebQualityFilter]:
    gopher = GopherQualityFilter(
        min_doc_words=cfg.min_doc_words,
        max_doc_words=cfg.max_doc_words,
        min_avg_word_length=cfg.min_avg_word_length,
        max_avg_word_length=cfg.max_avg_word_length,
        max_symbol_word_ratio=cfg.max_symbol_word_ratio,
        max_bullet_lines_ratio=cfg.max_bullet_lines_ratio,
        max_ellipsis_lines_ratio=cfg.max_ellipsis_lines_ratio,
        max_non_alpha_words_ratio=cfg.min_alpha_words_ratio,
        min_stop_words=cfg.min_stop_words,
        stop_words=cfg.stop_words,
        language="cmn_Hani",
    )
    fineweb = FineWebQualityFilter(
        line_punct_thr=cfg.min_line_punct_ratio or 0.0,
        line_punct_exclude_zero=cfg.line_punct_exclude_zero,
        # datatrove drops when the short-line ratio (at most 1) exceeds the threshold: above 1 is off
        short_line_thr=cfg.max_short_line_ratio if cfg.max_short_line_ratio is not None else 999,
        short_line_length=cfg.short_line_length,
        char_duplicates_ratio=cfg.max_char_duplicates_ratio if cfg.max_char_duplicates_ratio is not None else 999,
        new_line_ratio=cfg.max_new_line_ratio if cfg.max_new_line_ratio is not None else 999,
        language="cmn_Hani",
    )
    return gopher, fineweb


def decision(result) -> tuple[bool, str | None]:
    return (True, None) if result is True else (result[0], result[1])


def datatrove_quality_decision(gopher, fineweb, text):
    doc = Document(text=text, id="doc")
    result = fineweb.filter(doc)  # FineWeb-2 runs FineWeb quality before Gopher quality
    if result is True:
        result = gopher.filter(doc)
    return decision(result)


def compare(documents, ours, theirs) -> tuple[list, dict]:
    """(mismatches, decision counts); ``theirs`` is a function of the text."""
    mismatches, counts = [], {}
    for i, text in enumerate(documents):
        mine = decision(ours.process(Document(text=text, id=str(i))))
        reference = theirs(text)
        if mine != reference:
            mismatches.append((i, mine, reference, text[:60]))
        counts[mine] = counts.get(mine, 0) + 1
    return mismatches, counts


REPETITION_CONFIGS = {
    "fineweb2-zh": load_recipe("fineweb2-zh").repetition,
    "all-rules": RepetitionConfig(dup_para_frac=0.1, dup_para_char_frac=0.1, dup_line_char_frac=0.1),
    "char-fractions": RepetitionConfig(dup_line_frac=None, dup_para_char_frac=0.1, dup_line_char_frac=0.05),
}
QUALITY_CONFIGS = {
    "fineweb2-zh": load_recipe("fineweb2-zh").quality,
    "strict": QualityConfig(
        max_short_line_ratio=0.5,
        line_punct_exclude_zero=True,
        min_line_punct_ratio=0.5,
        max_char_duplicates_ratio=0.01,
        max_avg_word_length=2.0,
        min_stop_words=4,
    ),
}


@pytest.mark.parametrize("name", sorted(REPETITION_CONFIGS))
def test_repetition_matches_datatrove(documents, zh_split, name):
    cfg = REPETITION_CONFIGS[name]
    theirs = datatrove_repetition(cfg)
    mismatches, counts = compare(
        documents, RepetitionFilter(cfg), lambda t: decision(theirs.filter(Document(text=t, id="x")))
    )
    assert mismatches == []
    # the comparison is not vacuous: both decisions and several reasons occur
    assert counts[(True, None)] > N_ARTICLES // 2
    assert len([k for k in counts if k[0] is False]) >= 4, counts


@pytest.mark.parametrize("name", sorted(QUALITY_CONFIGS))
def test_quality_matches_datatrove(documents, zh_split, name):
    cfg = QUALITY_CONFIGS[name]
    gopher, fineweb = datatrove_quality(cfg)
    texts = [t for t in documents if t.strip()]  # datatrove's Gopher filter divides by zero on empty text
    mismatches, counts = compare(texts, QualityFilter(cfg), lambda t: datatrove_quality_decision(gopher, fineweb, t))
    assert mismatches == []
    assert counts.get((True, None), 0) > 10
    assert len([k for k in counts if k[0] is False]) >= 4, counts


def test_fineweb2_recipe_thresholds_are_the_defaults():
    recipe = load_recipe("fineweb2-zh")
    assert recipe.repetition == RepetitionConfig()
    assert recipe.quality == QualityConfig()
    assert recipe.quality.max_short_line_ratio is None  # the short-line rule is off for cmn_Hani


def test_short_line_rule_off_when_none(zh_split):
    cfg = QualityConfig()
    lines = "\n".join(f"{i}号，{s}" for i, s in enumerate(SENTENCES * 4))  # distinct lines of <= 30 characters
    assert all(len(line) <= 30 for line in lines.split("\n"))
    assert QualityFilter(cfg).fineweb(lines, zh_words(lines)) is True
    strict = dataclasses.replace(cfg, max_short_line_ratio=0.67)
    assert QualityFilter(strict).fineweb(lines, zh_words(lines)) == (False, "short_line_ratio")
    _, fineweb = datatrove_quality(strict)
    assert fineweb.filter(Document(text=lines, id="x")) == (False, "short_line_ratio")


def test_empty_documents_dropped_without_error():
    assert QualityFilter(QualityConfig()).process(Document(text="", id="x")) == (False, "empty")
    assert RepetitionFilter(RepetitionConfig()).process(Document(text="", id="x")) == (False, "empty")
