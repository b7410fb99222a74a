"""The ctlab command: help at every level, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from ctlab.cli import main

HELP = {  # command: what its help must offer (its subcommands, or its own options)
    (): ["demo", "data", "tokenizer", "train", "eval", "--version"],
    ("data",): ["clean", "recipes", "builtin", "tokenize", "pack"],
    ("data", "clean"): ["INPUT", "--out", "--recipe", "--format", "--tasks", "--executor", "--slurm-partition"],
    ("data", "recipes"): ["recipe"],
    ("data", "builtin"): ["--out", "--articles"],
    ("data", "tokenize"): ["SOURCE", "--tokenizer", "--mix", "--workers", "--seed", "--text-key"],
    ("data", "pack"): ["TOKENS", "--seq-len", "--strategy", "--out"],
    ("tokenizer",): ["train", "compare"],
    ("tokenizer", "train"): ["CORPUS", "--vocab-size", "--min-frequency"],
    ("tokenizer", "compare"): ["TOKENIZER", "--zh", "--en", "--references", "Qwen3.6"],
    ("train",): ["pretrain"],
    ("train", "pretrain"): ["--config", "--preset", "tiny-mhmoe", "--set", "--init-from", "--parallel", "--eval"],
    ("eval",): ["early-exit"],
    ("eval", "early-exit"): ["RUN", "--data", "--batches"],
    ("demo",): ["--out", "--recipe", "--articles", "--workers"],
}


@pytest.mark.parametrize("argv", list(HELP), ids=lambda argv: " ".join(argv) or "ctlab")
def test_help_at_every_level(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: ctlab {' '.join(argv)}".rstrip())
    missing = [word for word in HELP[argv] if word not in shown]
    assert not missing, shown


def test_help_loads_no_stage():
    """`ctlab --help` imports none of the stages (nor torch): each is imported when asked for."""
    probe = (
        "import sys\nfrom ctlab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ctlab.', 'torch', 'datatrove', 'pydantic'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "['ctlab.cli', 'ctlab.errors']"


def test_an_internal_error_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    """Only a UserError is a one-line usage error: a bug inside a run propagates (exit status 1)."""
    import ctlab.data.recipes

    def broken(spec):
        raise ValueError("a bug, not a user mistake")

    monkeypatch.setattr(ctlab.data.recipes, "load_recipe", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["data", "recipes"])
    probe = (
        "import sys, ctlab.data.recipes as r\n"
        "def broken(spec):\n    raise ValueError('a bug, not a user mistake')\n"
        "r.load_recipe = broken\nfrom ctlab.cli import main\nsys.exit(main(['data', 'recipes']))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: a bug, not a user mistake" in result.stderr
    assert "ctlab: error" not in result.stderr


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
