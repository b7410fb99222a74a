"""Normalize (format stage) and MaskPII, each through the step's ``process(doc)``."""

import pytest
from datatrove.data import Document

from ctlab.data.normalize import MaskPII, Normalize, NormalizeConfig, PIIConfig, valid_resident_id

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def gb11643(first17: str) -> str:
    """The full 18-character resident ID: GB 11643 / ISO 7064 MOD 11-2 check character appended."""
    total = sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def wrong_check(number: str) -> str:
    """The same number with a different (invalid) last digit."""
    return number[:17] + ("1" if number[17] != "1" else "2")


def normalize(text: str, **overrides):
    doc = Document(text=text, id="doc")
    result = Normalize(NormalizeConfig(**overrides)).process(doc)
    return result, doc.text


def mask(text: str, **overrides) -> str:
    doc = Document(text=text, id="doc")
    assert MaskPII(PIIConfig(**overrides)).process(doc) is True  # PII masking never drops
    return doc.text


# --- Normalize -----------------------------------------------------------------------------


def test_nfkc_folds_fullwidth_and_compatibility_forms():
    result, text = normalize("ＡＢＣ１２３，第①章ﬁ", punctuation_to_halfwidth=False)
    assert result is True
    assert text == "ABC123,第1章fi"


def test_nfkc_off_keeps_fullwidth_letters():
    _, text = normalize("ＡＢＣ", nfkc=False)
    assert text == "ＡＢＣ"


def test_bracket_ratio_above_limit_drops():
    # the text inside 【…】 is 6 of the page's 24 characters: 25% > 10%
    text = "【首页】【新闻中心】今天的天气很好，我们去公园。"
    assert len(text) == 24
    result, _ = normalize(text)
    assert result == (False, "bracket_ratio")


def test_bracket_ratio_below_limit_keeps_brackets():
    body = "今天的天气很好，我们一起去公园散步，看到了很多美丽的花朵。" * 3
    text = "【记者】" + body  # 2 bracketed characters in a long paragraph
    assert 2 / len(text) < 0.1
    result, out = normalize(text)
    assert result is True
    assert out.startswith("【记者】今天的天气很好,")  # MAP-CC leaves 【】 as they are


def test_bracket_ratio_boundary_is_exclusive():
    # exactly 10%: 4 characters inside the brackets, 40 in all → kept (the rule drops above the limit)
    text = "【标题内容】" + "今" * 34
    assert len(text) == 40
    assert normalize(text)[0] is True
    assert normalize("【标题内容】" + "今" * 33)[0] == (False, "bracket_ratio")


def test_bracket_pairs_count_within_one_line():
    # MAP-CC's pattern does not cross line breaks: a pair split over lines counts nothing
    text = "【标题\n" + "今" * 20 + "】"
    assert normalize(text)[0] is True


def test_bracket_rule_off():
    result, _ = normalize("【首页】【新闻】【财经】", max_bracket_ratio=None)
    assert result is True


def test_punctuation_mapping_to_halfwidth():
    result, text = normalize(
        "你好，世界。“引用”‘单引’《书名》、顿号——破折号～问？叹！冒：分；（括号）【注】" + "文" * 80
    )
    assert result is True
    assert text.startswith("你好,世界.\"引用\"'单引'《书名》、顿号——破折号~问?叹!冒:分;(括号)【注】")


def test_punctuation_mapping_off_keeps_cjk_punctuation():
    _, text = normalize("你好，世界。“引用”", punctuation_to_halfwidth=False, nfkc=False)
    assert text == "你好，世界。“引用”"


def test_ideographic_space_becomes_ascii_space():
    _, text = normalize("\u3000\u3000近日，南宁市公安局侦破了一起案件。")
    assert text == "  近日,南宁市公安局侦破了一起案件."


def test_opencc_traditional_to_simplified_when_enabled():
    result, text = normalize("「漢語」是一種語言，歷史悠久。", traditional_to_simplified=True)
    assert result is True
    assert "汉语" in text and "一种语言" in text and "历史" in text
    assert "漢" not in text and "語" not in text


def test_opencc_off_by_default():
    _, text = normalize("「漢語」是一種語言。")
    assert "漢語" in text and "一種" in text


@pytest.mark.parametrize(
    "raw",
    [
        "请访问https://example.com/path?a=1&b=2查看详情",
        "请访问http://news.example.cn/2019/01/02/abc.html查看详情",
        "请访问www.example.com/page查看详情",
        "请访问HTTPS://EXAMPLE.COM 查看详情",
    ],
)
def test_links_inside_chinese_text_are_stripped(raw):
    result, text = normalize(raw)
    assert result is True
    assert text.replace(" ", "") == "请访问查看详情"
    assert "example" not in text.lower()


def test_links_kept_when_stripping_off():
    _, text = normalize("请访问https://example.com查看", strip_links=False)
    assert text == "请访问https://example.com查看"


def test_text_that_is_only_a_link_is_dropped():
    assert normalize("https://example.com/only-a-link")[0] == (False, "empty_after_normalize")


def test_plain_chinese_text_passes_unchanged():
    text = "两辆摩托车被交警拦了下来"
    assert normalize(text) == (True, text)


# --- MaskPII ------------------------------------------------------------------------------


def test_email_masked():
    out = mask("如有问题请联系zhang.san+news@example.com.cn或admin@mail.example.org，谢谢。")
    assert out == "如有问题请联系<email>或<email>，谢谢。"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("服务器IP是192.168.1.1。", "服务器IP是<ip>。"),
        ("地址10.0.0.255和8.8.8.8都可用", "地址<ip>和<ip>都可用"),
        ("IP：255.255.255.0", "IP：<ip>"),
    ],
)
def test_ipv4_masked_even_when_glued_to_cjk(raw, expected):
    assert mask(raw) == expected


@pytest.mark.parametrize("raw", ["版本1.2.3.4.5发布", "数值256.1.1.1不是地址", "坐标1.2.3"])
def test_non_ip_dotted_numbers_not_masked(raw):
    assert mask(raw) == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("手机13812345678。", "手机<phone>。"),
        ("请拨打+86 138-1234-5678咨询", "请拨打<phone>咨询"),
        ("电话：0086 159 1234 5678", "电话：<phone>"),
        ("联系人张先生18612345678李女士", "联系人张先生<phone>李女士"),
    ],
)
def test_mobile_numbers_masked(raw, expected):
    assert mask(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("座机010-62345678。", "座机<phone>。"),
        ("电话(0755)82345678转总机", "电话<phone>转总机"),
        ("传真0571-8765432", "传真<phone>"),
        ("总机02087654321", "总机<phone>"),
    ],
)
def test_landline_numbers_masked(raw, expected):
    assert mask(raw) == expected


def test_valid_resident_id_masked_and_invalid_checksum_kept():
    valid = gb11643("11010519491231002")
    assert valid == "11010519491231002X"  # the standard's published example
    other = gb11643("32010219851111001")
    assert valid_resident_id(valid) and valid_resident_id(other)
    assert valid_resident_id(valid.lower())

    assert mask(f"身份证号{valid}。") == "身份证号<id_number>。"
    assert mask(f"身份证号{valid.lower()}。") == "身份证号<id_number>。"
    assert mask(f"他的证件号码为{other}，已登记") == "他的证件号码为<id_number>，已登记"

    bad = wrong_check(other)
    assert not valid_resident_id(bad)
    assert mask(f"订单号{bad}。") == f"订单号{bad}。"
    bad_x = wrong_check(valid)
    assert mask(f"编号{bad_x}") == f"编号{bad_x}"


@pytest.mark.parametrize(
    "raw",
    [
        "2023年全国GDP增长5.2%，人口14亿。",
        "这款手机售价1999元，原价2599.00元。",
        "第12345678号文件",
        "订单号12345678901已发货",  # 11 digits but not a mobile prefix
        "编号123456789012345678901234",  # long digit string, no ID structure
        "1949年10月1日",
    ],
)
def test_ordinary_numbers_not_masked(raw):
    assert mask(raw) == raw


def test_kinds_can_be_switched_off():
    text = "邮箱a@b.com，手机13812345678"
    assert mask(text, email=None) == "邮箱a@b.com，手机<phone>"
    assert mask(text, mobile=None) == "邮箱<email>，手机13812345678"


def test_pii_stats_counted_per_kind():
    step = MaskPII(PIIConfig())
    doc = Document(text="a@b.com 13812345678 13912345678 192.168.0.1", id="d")
    step.process(doc)
    assert step.stats["pii/email"].total == 1
    assert step.stats["pii/mobile"].total == 2
    assert step.stats["pii/ip"].total == 1
