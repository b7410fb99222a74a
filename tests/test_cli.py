"""The ctlab command: help at every level, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from ctlab.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["data"],
        ["data", "clean"],
        ["data", "recipes"],
        ["data", "tokenize"],
        ["data", "pack"],
        ["tokenizer"],
        ["tokenizer", "train"],
        ["tokenizer", "compare"],
        ["train"],
        ["train", "pretrain"],
        ["eval"],
        ["eval", "early-exit"],
        ["demo"],
    ],
)
def test_help_at_every_level(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ctlab" in capsys.readouterr().out


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "clean", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ctlab: error: input not found: {tmp_path / 'nope.jsonl'}"]


def test_unknown_recipe_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "你好"}\n', encoding="utf-8")
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "out"), "--recipe", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe 'nope'" in err[0]


def test_invalid_recipe_file_is_a_one_line_error(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("language: {min_zh_scor: 0.5}\n", encoding="utf-8")
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "你好"}\n', encoding="utf-8")
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "out"), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown field 'min_zh_scor'" in err[0]


def test_wrong_argument_exits_2():
    result = subprocess.run([sys.executable, "-m", "ctlab.cli", "data", "clean"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "required" in result.stderr


def test_recipes_lists_both_with_thresholds(capsys):
    assert main(["data", "recipes"]) == 0
    out = capsys.readouterr().out
    assert "mapcc:" in out and "fineweb2-zh:" in out
    assert "dup_line_frac=0.287" in out and "min_mean_word_length=1.3" in out


def test_demo_refuses_articles_from_the_held_out_split(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--articles", "7000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held out" in err[0]
    assert not (tmp_path / "demo").exists()
