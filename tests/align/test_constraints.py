"""Verifiable constraints: each kind's checker on replies that hold and break it, its rewrite,
composition that refuses what cannot hold together, IFEval's strict and loose scoring, and
preference pairs judged by the verifiers."""

import json
import random

import pytest

from ctlab.align import constraints as c
from ctlab.align.instructions import (
    constrained_prompt,
    constraint_prompts,
    score_replies,
    seed_requests,
    written_answer,
)
from ctlab.align.pairs import corrected, passed
from ctlab.cli import main

# (constraint, a reply that holds it, a reply that breaks it)
CASES = [
    (c.MinCharacters(10), "今天天气很好，我们去公园散步。", "好的。"),
    (c.MaxCharacters(8), "好的，明白。", "今天天气很好，我们去公园散步。"),
    (c.SentenceCount(2), "第一句。第二句！", "只有一句。"),
    (c.ParagraphCount(2), "第一段。\n\n第二段。", "只有一段。\n紧接着一行。"),
    (c.IncludeKeywords(["北京", "春天"]), "北京的春天很美。", "北京的冬天很冷。"),
    (c.ExcludeKeywords(["北京"]), "上海很大。", "北京很大。"),
    (c.KeywordFrequency("春天", 2), "春天来了，春天真好。", "春天来了。"),
    (c.StartWith("首先，"), "首先，我们要明确目标。", "我们首先要明确目标。"),
    (c.EndWith("谢谢。"), "请多指教，谢谢。", "谢谢。请多指教。"),
    (c.BulletList(2), "- 第一点\n- 第二点", "- 第一点\n- 第二点\n- 第三点"),
    (c.NumberedList(3), "1. 甲\n2. 乙\n3. 丙", "1. 甲\n2. 乙"),
    (c.JsonFormat(), '{"回答": "好"}', "回答：好"),
    (c.MarkdownTitle(), "# 标题\n正文", "标题\n正文"),
    (c.ChineseOnly(), "只有中文。", "中文和English。"),
    (c.EnglishOnly(), "Only English here.", "English和中文。"),
    (c.AllCapitals(), "ALL IN CAPITALS.", "Not all capitals."),
    (c.NoCommas(), "没有逗号。", "有逗号，对吧。"),
    (c.FullWidthPunctuation(), "全角标点，很好。", "半角标点,不好."),
    (c.Quotation(), "“整段都在引号里。”", "引号“只在中间”而已。"),
    (c.RepeatRequest("介绍北京。"), "介绍北京。\n北京是中国的首都。", "北京是中国的首都。"),
    (c.Postscript(), "正文。\n附注：请回复。", "正文。附注在前面。\n结尾。"),
    (c.Placeholders(2), "请寄到[地址]，联系[电话]。", "请寄到[地址]。"),
    (c.Highlight(2), "**重点一**和**重点二**。", "**只有一处**重点。"),
    (c.Sections(2), "第一部分：背景。\n第二部分：结论。", "第一部分：全部内容。"),
    (c.TwoResponses(), "回答一。\n******\n回答二。", "回答一。\n******\n回答一。"),
]


def test_every_kind_is_covered_and_there_are_at_least_twenty():
    assert {case[0].kind for case in CASES} == set(c.KINDS) and len(c.KINDS) >= 20


@pytest.mark.parametrize(("constraint", "holds", "breaks"), CASES, ids=[case[0].kind for case in CASES])
def test_each_checker_tells_holding_from_breaking(constraint, holds, breaks):
    assert constraint.check(holds) and not constraint.check(breaks)
    assert constraint.text("zh") and constraint.text("en") and constraint.text("zh") != constraint.text("en")
    assert c.from_dict(json.loads(json.dumps(constraint.to_dict()))) == constraint
    fixed = constraint.fix(breaks)
    if fixed is not None:  # a rewrite, where the kind has one, does satisfy the constraint
        assert constraint.check(fixed), fixed


def test_loose_accepts_a_leading_line_and_emphasis_strict_does_not():
    start = c.StartWith("首先，")
    assert c.follows(start, "好的，下面是回答：\n首先，我们要明确目标。") == (False, True)
    assert c.follows(c.EndWith("谢谢。"), "**请多指教，谢谢。**") == (False, True)
    assert c.follows(start, "我们首先要明确目标。") == (False, False)


def test_composition_refuses_what_cannot_hold_together():
    assert not c.compatible([c.ChineseOnly(), c.EnglishOnly()])
    assert not c.compatible([c.JsonFormat(), c.BulletList(3)])
    assert not c.compatible([c.IncludeKeywords(["北京"]), c.ExcludeKeywords(["北京"])])
    assert not c.compatible([c.MinCharacters(100), c.MaxCharacters(50)])
    assert not c.compatible([c.BulletList(2), c.BulletList(3)])
    assert c.compatible([c.IncludeKeywords(["北京"]), c.ExcludeKeywords(["上海"]), c.NoCommas()])
    rng = random.Random(0)
    for _ in range(300):
        drawn = c.compose("介绍北京。", ["北京", "首都", "历史"], rng, rng.randint(1, 5))
        assert c.compatible(drawn) and 1 <= len(drawn) <= 5


def test_prompts_hold_their_constraints_and_splits_do_not_share_seeds():
    records = constraint_prompts(60, 3, 5, seed=1, split="test")
    assert len(records) == 60
    for record in records:
        prompt, constraints = constrained_prompt(json.loads(json.dumps(record, ensure_ascii=False)))
        assert 3 <= len(constraints) <= 5 and all(k.text("zh") in prompt for k in constraints)
        assert prompt.startswith(record["request"])
    train = {request for request, _, _ in seed_requests("train")}
    assert not any(request in train for request, _, _ in seed_requests("test"))


def test_scores_follow_ifeval_levels():
    items = [
        ("p1", [c.NoCommas(), c.EndWith("。")]),
        ("p2", [c.NoCommas()]),
    ]
    result = score_replies(items, ["没有逗号。", "有，逗号"])
    assert result["prompt_strict"] == 0.5  # p1 holds both, p2 breaks its one
    assert result["instruction_strict"] == pytest.approx(2 / 3)
    assert result["kinds"]["no_commas"] == {"count": 2, "strict": 0.5, "loose": 0.5}


def test_a_correction_satisfies_more_and_written_answers_satisfy_all():
    constraints = [c.EndWith("谢谢。"), c.NoCommas(), c.MinCharacters(200)]
    reply = "您好，收到了"
    fixed = corrected(constraints, reply, "")
    assert fixed is not None and passed(constraints, fixed, "") > passed(constraints, reply, "")
    assert corrected([c.MinCharacters(200)], reply, "") is None  # no rewrite for a length floor
    for record in constraint_prompts(40, 1, 3, seed=2, split="train"):
        prompt, listed = constrained_prompt(record)
        answer = written_answer(record["draft"], listed, prompt)
        assert answer is None or all(k.check(answer, prompt) for k in listed)


def test_constraint_commands_run_end_to_end(tmp_path, capsys, text_model):
    prompts, sft = tmp_path / "prompts.jsonl", tmp_path / "sft.jsonl"
    assert main(["data", "constraints", "--out", str(prompts), "--count", "12", "--sft", str(sft)]) == 0
    conversations = [json.loads(line) for line in sft.read_text(encoding="utf-8").splitlines()]
    assert conversations and all(m["messages"][1]["role"] == "assistant" for m in conversations)
    capsys.readouterr()
    evaluate = ["eval", "constraints", str(text_model), "--data", str(prompts), "--limit", "4", "--max-new-tokens", "8"]
    assert main([*evaluate, "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompts"] == 4 and set(result) >= {"prompt_strict", "instruction_loose", "kinds"}
    pairs = tmp_path / "pairs.jsonl"
    argv = ["data", "pairs", str(text_model), "--prompts", str(prompts), "--out", str(pairs), "--limit", "6"]
    assert main([*argv, "--samples", "2", "--max-new-tokens", "8", "--route", "correct", "--no-progress"]) == 0
    for line in pairs.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        assert pair["passed"][0] > pair["passed"][1] and pair["route"] == "correct"


def test_strings_one_constraint_requires_and_another_forbids_are_refused():
    request = "介绍北京的历史，要简短。"
    assert not c.compatible([c.StartWith("首先，"), c.NoCommas()])  # the phrase holds a comma
    assert not c.compatible([c.RepeatRequest(request), c.ExcludeKeywords(["北京"])])
    assert not c.compatible([c.RepeatRequest(request), c.MaxCharacters(8)])
    assert not c.compatible([c.IncludeKeywords(["中国人"]), c.ExcludeKeywords(["中国"])])
    assert not c.compatible([c.EndWith("谢谢。"), c.EnglishOnly()])
    assert c.compatible([c.StartWith("首先"), c.NoCommas(), c.IncludeKeywords(["北京"])])


def test_sentences_end_at_full_stops_too_and_an_unended_tail_counts():
    assert c.sentences("I agree. It is fine. Thanks.") == 3
    assert c.sentences("第一句。第二句") == 2
    assert c.sentences("价格是3.5元。很便宜！") == 2


@pytest.mark.parametrize(
    ("listed", "reason"),
    [
        ([{"kind": "min_characters", "n": "5"}], "min_characters constraint with a bad n"),
        ([{"kind": "start_with"}], "start_with constraint without its fields (phrase)"),
        ([{"kind": "start_with", "phrase": ""}], "start_with constraint with a bad phrase"),
        ([{"kind": "teleport"}], "unknown constraint kind"),
        (["no_commas"], "constraint not an object"),
        ([], "no constraints list"),
    ],
)
def test_malformed_constraint_records_are_left_out_with_a_reason(listed, reason):
    from ctlab.align.records import Malformed

    with pytest.raises(Malformed, match=reason.replace("(", r"\(").replace(")", r"\)")):
        constrained_prompt({"prompt": "问", "constraints": listed})
