"""`ctlab eval early-exit`: the per-layer table of a checkpoint, written to a report folder that
it claims; mistakes are one-line errors that leave the user's files alone."""

import json

import pytest

from ctlab.cli import main
from ctlab.eval.early_exit import early_exit_report
from ctlab.eval.score import layer_perplexity, packed_batches
from ctlab.model.hf import load_model


def test_report_holds_each_layer(tmp_path, capsys, checkpoint, packed):
    out = tmp_path / "report"
    assert main(["eval", "early-exit", str(checkpoint), "--data", packed, "--batches", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["layer", "model", "ppl"] and [line.split()[0] for line in table[2:5]] == ["1", "2", "3"]
    saved = json.loads((out / "early_exit.json").read_text())
    expected = layer_perplexity(load_model(checkpoint).eval(), packed_batches(packed, 8, 2))
    assert [row["layer"] for row in saved["model"]] == [1, 2, 3]
    for got, want in zip(saved["model"], expected, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6) and got["tokens"] == want["tokens"]
    assert (out / "early_exit.png").read_bytes()[:4] == b"\x89PNG"
    assert early_exit_report([str(checkpoint)], packed, str(out), 1)["model"][0]["tokens"] < expected[0]["tokens"]


def test_mistakes_are_one_line_errors(tmp_path, capsys, checkpoint, packed):
    with pytest.raises(SystemExit) as refused:
        main(["eval", "early-exit", str(checkpoint), "--data", packed, "--batches", "0"])
    assert refused.value.code == 2 and "--batches: must be at least 1, not 0" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "early_exit.json").write_text("my notes")
    (tmp_path / "a-file").write_text("mine")
    cases = [
        (["--out", str(mine)], "not empty and not a ctlab early-exit report folder"),
        (["--out", str(tmp_path / "a-file")], "a-file is a file, not a folder"),
        (["--out", "/sys/ctlab-test/report"], "cannot write to /sys/ctlab-test/report"),
    ]
    for flags, says in cases:
        assert main(["eval", "early-exit", str(checkpoint), "--data", packed, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert (mine / "early_exit.json").read_text() == "my notes"
    assert main(["eval", "early-exit", str(tmp_path / "nothing"), "--data", packed, "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "r").exists()
