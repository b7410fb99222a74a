"""Sample designs: every design's gold replies read back exactly, near-misses are still read,
options that do not apply are refused, the held-out split never enters training, and the
data → eval commands run end to end."""

import itertools
import json

import pytest

from ctlab.align.sde import DESIGN_FIELDS, Design, instruction, parse, prompt, reply, sample, score
from ctlab.align.tasks import task
from ctlab.cli import main
from ctlab.errors import UserError

ENTITIES, SENTIMENT = task("entities"), task("sentiment")


def designs_of(chosen):
    options = {
        "instruction": ("first", "last", "none"),
        "input_loss": (False,),
        "format": ("natural", "lines", "json"),
        "unmentioned": ("placeholder", "omit") if not chosen.classification else ("placeholder",),
        "labels": ("text", "numeric") if chosen.classification else ("text",),
        "reasoning": ("none",) if chosen.classification else ("none", "cot", "after"),
    }
    for values in itertools.product(*(options[name] for name in DESIGN_FIELDS)):
        yield Design(**dict(zip(DESIGN_FIELDS, values, strict=True)))


@pytest.mark.parametrize("chosen", [ENTITIES, SENTIMENT], ids=lambda t: t.name)
def test_every_designs_gold_replies_read_back_exactly(chosen):
    records = chosen.records("test")[:150]
    assert any(not any(r.answer.values()) for r in records) or chosen.classification  # empty aspects occur
    for design in designs_of(chosen):
        replies = [reply(chosen, r, design) for r in records]
        result = score(chosen, records, replies, design)
        assert result["parse_rate"] == 1 and result["accuracy"] == 1, design.name()


def test_near_misses_are_read_and_garbage_is_counted():
    lines, json_design, natural = Design(), Design(format="json"), Design(format="natural")
    gold = {"人名": ("江泽民", "李鹏"), "地名": ("北京",), "机构名": ()}
    for design, output in [
        (lines, "人名: 江泽民,李鹏\n地名 ：北京\n机构名：无。"),
        (lines, "人名：江泽民、李鹏\n地名：北京"),  # an empty aspect left out
        (json_design, '答：{"人名": ["江泽民", "李鹏"], "地名": "北京", "机构名": []} 完'),
        (json_design, "人名：江泽民、李鹏\n地名：北京\n机构名：无"),  # lines where JSON was asked
        (natural, "人名有江泽民、李鹏，地名有北京，没有提到机构名。"),
    ]:
        assert parse(ENTITIES, output, design) == gold, output
    assert parse(SENTIMENT, "情感：正面的", lines) == {"情感": ("正面",)}
    assert parse(SENTIMENT, '{"情感": 1}', Design(format="json", labels="numeric")) == {"情感": ("负面",)}
    for design, output in [(lines, "今天天气很好"), (lines, ""), (json_design, "{broken"), (lines, "情感：还行")]:
        chosen = SENTIMENT if "情感" in output else ENTITIES
        assert parse(chosen, output, design) is None, output
    records = ENTITIES.records("test")[:4]
    result = score(ENTITIES, records, [reply(ENTITIES, r, lines) for r in records[:2]] + ["乱码", ""], lines)
    assert result["parse_rate"] == 0.5 and result["accuracy"] == 0.5


def test_the_instruction_goes_where_the_design_says():
    record = ENTITIES.records("test")[0]
    told = instruction(ENTITIES, Design())
    assert prompt(ENTITIES, record, Design()) == f"{told}\n{record.text}"
    assert prompt(ENTITIES, record, Design(instruction="last")) == f"{record.text}\n{told}"
    assert prompt(ENTITIES, record, Design(instruction="none")) == record.text
    assert "0表示正面" in instruction(SENTIMENT, Design(labels="numeric"))
    cot = sample(ENTITIES, record, Design(reasoning="cot"))["messages"][1]["content"]
    assert cot.startswith("分析：") and "\n答案：" in cot


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(UserError, match="numeric applies to classification"):
        Design(labels="numeric").check(ENTITIES)
    with pytest.raises(UserError, match="reasoning needs word-level evidence"):
        Design(reasoning="cot").check(SENTIMENT)


@pytest.mark.parametrize("chosen", [ENTITIES, SENTIMENT], ids=lambda t: t.name)
def test_the_held_out_split_never_enters_training(chosen):
    train = {r.text for r in chosen.records("train")}
    test = chosen.records("test")
    assert len(test) > 500 and len(train) > 5 * len(test)
    assert not any(r.text in train for r in test)  # the source repeats sentences: deduplicated first


def test_data_then_eval_runs_end_to_end(tmp_path, capsys, text_model):
    out = tmp_path / "sde"
    assert main(["data", "sde", "--task", "sentiment", "--out", str(out), "--train", "40", "--test", "10"]) == 0
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["messages"][1]["content"] in ("情感：正面", "情感：负面")
    capsys.readouterr()
    result_file = tmp_path / "result.json"
    argv = ["eval", "sde", str(text_model), "--data", str(out), "--limit", "6", "--max-new-tokens", "8"]
    assert main([*argv, "--no-progress", "--out", str(result_file)]) == 0
    printed = capsys.readouterr().out
    assert "parse rate" in printed and "ES-SDE" in printed
    result = json.loads(result_file.read_text())
    assert result["records"] == 6 and len(result["examples"]) == 5 and result["majority_accuracy"] == 0.5


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["data", "sde", "--task", "entities", "--labels", "numeric"], "numeric applies to classification"),
        (["data", "sde", "--task", "sentiment", "--reasoning", "after"], "reasoning needs word-level evidence"),
        (["eval", "sde", "MODEL"], "give either --data"),
        (["eval", "sde", "MODEL", "--data", "nowhere"], "not a folder written by `ctlab data sde`"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, capsys, argv, says):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    if argv[:2] == ["data", "sde"]:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_a_classification_answer_names_exactly_one_label_as_the_design_writes_it():
    assert parse(SENTIMENT, "情感：正面、负面", Design()) is None  # hedged
    assert parse(SENTIMENT, "情感：1", Design()) is None  # a number where text labels were taught
    assert parse(SENTIMENT, "情感：1", Design(labels="numeric")) == {"情感": ("负面",)}
    empty = {aspect: () for aspect in ENTITIES.aspects}
    record = next(r for r in ENTITIES.records("test") if not any(r.answer.values()))
    omitted_json = Design(format="json", unmentioned="omit")
    assert reply(ENTITIES, record, omitted_json) == "{}" and parse(ENTITIES, "{}", omitted_json) == empty
    assert parse(ENTITIES, "人名：张三 李四\n地名 ：北京", Design())["人名"] == ("张三", "李四")


def test_outputs_go_where_asked_or_the_mistake_is_one_line(tmp_path, capsys, text_model):
    argv = ["eval", "sde", str(text_model), "--task", "sentiment", "--limit", "2", "--max-new-tokens", "4"]
    nested = tmp_path / "a" / "b" / "result.json"
    assert main([*argv, "--no-progress", "--out", str(nested)]) == 0 and nested.is_file()
    capsys.readouterr()
    assert main([*argv, "--no-progress", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main([*argv, "--data", str(tmp_path)]) == 2
