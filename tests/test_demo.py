"""`ctlab demo` is a list of `ctlab` commands: each printed as it runs, each one a user could
type, run through the same entry point; its folder is claimed before any of them runs."""

import shlex

import pytest

import ctlab.cli
from ctlab.cli import build_parser, main
from ctlab.demo import run_demo, steps


def test_every_step_is_a_command_the_parser_accepts(tmp_path):
    plan = steps(str(tmp_path / "demo"), "mapcc", "mapcc", 2000, 2)
    assert len(plan) == 9
    commands = [argv for step in plan for argv in step.commands]
    assert [argv[:2] for argv in commands[:3]] == [["data", "builtin"], ["data", "clean"], ["tokenizer", "train"]]
    assert commands[-3][:2] == ["eval", "early-exit"]
    assert [argv[0] for argv in commands[-2:]] == ["generate", "generate"] and "layerskip" in commands[-1]
    for argv in commands:
        assert build_parser(argv).parse_args(argv).handler is not None


def test_the_demo_prints_exactly_the_commands_it_runs(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(ctlab.cli, "main", lambda argv: ran.append(argv) or 0)
    monkeypatch.setattr("ctlab.demo.steps", lambda *a: [s.__class__(s.text, s.commands) for s in steps(*a)])
    out = tmp_path / "demo"
    (out / "tokenizer").mkdir(parents=True)  # a folder of the demo's layout with a user's file in it
    (out / "tokenizer" / "notes.txt").write_text("mine")
    (out / "run.json").write_text('{"kind": "demo", "identity": {"recipe": "mapcc", "articles": 50, "workers": 1}}')
    assert run_demo(str(out), "mapcc", 50, 1) == 0
    printed = [line.strip()[len("$ ctlab ") :] for line in capsys.readouterr().out.splitlines() if "$ ctlab" in line]
    assert printed == [shlex.join(argv) for argv in ran] and len(ran) == 16
    assert (out / "tokenizer" / "notes.txt").read_text() == "mine"  # the demo itself removes nothing


def test_a_demo_folder_is_checked_before_any_step(tmp_path, capsys):
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (tmp_path / "a-file", "is a file"),
        (tmp_path / "other", "not empty and not a ctlab demo folder"),
        ("/sys/ctlab-test/demo", "cannot write to /sys/ctlab-test/demo"),
    ]
    for out, says in cases:
        assert main(["demo", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert (tmp_path / "a-file").read_text() == "mine" and [p.name for p in (tmp_path / "other").iterdir()] == [
        "notes.txt"
    ]
    with pytest.raises(SystemExit):
        main(["demo", "--workers", "0"])
