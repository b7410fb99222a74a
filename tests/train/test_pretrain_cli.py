"""`ctlab train pretrain` as a new user meets it: every mistake is one line with exit status 2 and
leaves nothing behind; a run resumes when it is the same run (from another path, or copied
elsewhere) and is refused, naming what differs, when it is not."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from ctlab.cli import main
from ctlab.runs import checkpoints, write_json
from ctlab.tokens.packed import PackedDataset, write_packing
from ctlab.train import loop as loop_module

TINY = ["--set", "model.num_layers=2", "--set", "model.hidden_size=64", "--set", "model.intermediate_size=128"]
QUICK = [*TINY, "--batch-size", "4", "--lr", "3e-3", "--set", "warmup_steps=1", "--set", "log_every=1"]
QUICK += ["--device", "cpu", "--no-progress"]


class Stop(Exception):
    pass


def pretrain(data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "pretrain", "--data", data, "--out", str(out), *QUICK, *extra]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctlab: error: "), err
    return err


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (["--set", "steps=5.5"], "training config: steps: must be a valid integer, not 5.5"),
        (["--set", "batch_size=2.5"], "batch_size: must be a valid integer, not 2.5"),
        (["--set", "model.num_layers=abc"], "model: num_layers: must be a valid integer, not 'abc'"),
        (["--set", "model.num_layers=-1"], "model: num_layers: must be greater than 0, not -1"),
        (["--set", "model.num_heads=0"], "model: num_heads: must be greater than 0, not 0"),
        (["--set", "model.vocab_size=100"], "has a vocabulary of 100 tokens, fewer than the 600"),
        (["--set", "layerskip=3"], "layerskip: must be a mapping, not 3"),
        (["--set", "layerskip.p_max=1"], "layerskip.p_max: must be less than 1, not 1"),
        (["--set", "model.max_position_embeddings=32"], "longer than the model's context of 32"),
        (["--preset", "huge"], "unknown model preset 'huge'"),
        (["--eval", "zh"], "bad --eval 'zh'"),
        (["--set", "replay_data=x"], "replay_data needs replay_ratio above 0"),
        (["--set", "lr=3e-"], "lr: must be a valid number, not '3e-'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, packed_train, settings, says):
    out = tmp_path / "run"
    assert says in one_line_error(capsys, pretrain(packed_train, out, "--steps", "2", *settings))
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("steps: 5.5\n", "training config: steps: must be a valid integer, not 5.5"),
        ("layerskip: 3\n", "training config: layerskip: must be a mapping, not 3"),
        ("steps: [\n", "not valid YAML"),
        ("- steps\n", "a training config is a mapping of fields, not list"),
        ("compile: 1\n", "compile: must be a valid boolean, not 1"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, packed_train, text, says):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    argv = ["train", "pretrain", "--config", str(config), "--data", packed_train, "--out", str(tmp_path / "run")]
    assert says in one_line_error(capsys, argv)
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_refuses_data_that_changed(tmp_path, capsys, packed_train):
    """The packed folder is re-made with another sequence length under a run: the run refuses it."""
    tokens = str(PackedDataset(packed_train).store.folder)
    data = tmp_path / "packed"
    write_packing(tokens, str(data), 64)
    assert main(pretrain(str(data), tmp_path / "run", "--steps", "2")) == 0
    shutil.rmtree(data)
    write_packing(tokens, str(data), 32)
    says = one_line_error(capsys, pretrain(str(data), tmp_path / "run", "--steps", "2"))
    assert "holds a pretrain run with other settings (data: " in says


def test_the_same_run_resumes_from_another_path_or_a_copied_folder(tmp_path, capsys, packed_train, monkeypatch):
    original = loop_module.save_checkpoint

    def save_then_stop(run, step, *args, **kwargs):
        original(run, step, *args, **kwargs)
        if step == 2:
            raise Stop

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_stop)
    monkeypatch.chdir(Path(packed_train).parent)
    with pytest.raises(Stop):  # stopped after its step-2 checkpoint, given the data by a relative path
        main(pretrain(Path(packed_train).name, tmp_path / "run", "--steps", "4", "--set", "checkpoint_every=2"))
    monkeypatch.setattr(loop_module, "save_checkpoint", original)
    copy = Path(shutil.copytree(tmp_path / "run", tmp_path / "copy"))
    for out in (tmp_path / "run", copy):  # by the absolute path; in a copy of the folder
        assert main(pretrain(packed_train, out, "--steps", "4", "--set", "checkpoint_every=2")) == 0
        assert "step 4: loss" in capsys.readouterr().out
        trained = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert trained == [1, 2, 3, 4]  # steps 1 and 2 were not done again
    a, b = (load_file(checkpoints(out)[-1][1] / "model.safetensors") for out in (tmp_path / "run", copy))
    assert all((a[name] == b[name]).all() for name in a)


def test_numbers_in_scientific_notation_are_numbers(tmp_path, packed_train):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 3e-4\nmodel: {rope_theta: 1e6}\n")
    argv = ["train", "pretrain", "--config", str(config), "--data", packed_train, "--out", str(tmp_path / "run")]
    assert main([*argv, "--steps", "1", *TINY, "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["lr"] == 3e-4 and saved["model"]["rope_theta"] == 1e6
    assert main(pretrain(packed_train, tmp_path / "other", "--steps", "1", "--set", "lr=5e-4")) == 0
    assert json.loads((tmp_path / "other" / "run.json").read_text())["config"]["lr"] == 5e-4


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, capsys, packed_train, train_tokenizer):
    out = tmp_path / "run"
    out.mkdir()
    write_json(out / "run.json", {"kind": "pretrain", "identity": {"steps": 99}})  # nothing trained yet
    shutil.copy(train_tokenizer / "tokenizer.json", out / "tokenizer.json")
    (out / "metrics.jsonl").write_text('{"step": 0, "eval": {}}\n')  # stopped before its first checkpoint
    assert main(pretrain(packed_train, out, "--steps", "2")) == 0
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 2


def test_killed_before_its_first_checkpoint_a_run_logs_step_0_once(tmp_path, packed_train, packed_heldout, monkeypatch):
    def stop(*args, **kwargs):
        raise Stop

    argv = pretrain(packed_train, tmp_path / "run", "--steps", "2", "--eval", f"zh={packed_heldout}")
    monkeypatch.setattr(loop_module, "save_checkpoint", stop)
    with pytest.raises(Stop):
        main(argv)
    monkeypatch.undo()
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [0, 2]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


def test_data_or_a_model_of_another_tokenizer_is_refused(tmp_path, capsys, packed_train, packed_other_tokenizer):
    base = pretrain(packed_train, tmp_path / "run", "--steps", "1")
    says = one_line_error(capsys, [*base, "--eval", f"other={packed_other_tokenizer}"])
    assert "held-out set other" in says and "another tokenizer" in says
    says = one_line_error(
        capsys, [*base, "--set", "replay_data=" + packed_other_tokenizer, "--set", "replay_ratio=0.25"]
    )
    assert "replay_data" in says and "another tokenizer" in says
    other_run = tmp_path / "other-run"
    assert main(pretrain(packed_other_tokenizer, other_run, "--steps", "1")) == 0
    continual = ["train", "pretrain", "--data", packed_train, "--out", str(tmp_path / "continual"), "--steps", "1"]
    says = one_line_error(capsys, [*continual, "--init-from", str(other_run), "--device", "cpu"])
    assert "--init-from" in says and "another tokenizer" in says
    says = one_line_error(
        capsys, ["eval", "early-exit", str(other_run), "--data", packed_train, "--out", str(tmp_path / "e")]
    )
    assert "another tokenizer" in says
    assert not (tmp_path / "run").exists() and not (tmp_path / "continual").exists() and not (tmp_path / "e").exists()


def test_init_from_takes_the_model_from_a_checkpoint_or_run(tmp_path, capsys, packed_train):
    base = tmp_path / "base"
    assert main(pretrain(packed_train, base, "--steps", "2")) == 0
    capsys.readouterr()
    continual = ["train", "pretrain", "--data", packed_train, "--steps", "1", "--device", "cpu", "--no-progress"]
    says = one_line_error(
        capsys, [*continual, "--out", str(tmp_path / "a"), "--init-from", str(base), "--preset", "tiny-moe"]
    )
    assert "--init-from takes the model from the checkpoint" in says
    clean = tmp_path / "clean-run"
    clean.mkdir()
    write_json(clean / "run.json", {"kind": "clean", "identity": {}})
    says = one_line_error(capsys, [*continual, "--out", str(tmp_path / "b"), "--init-from", str(clean)])
    assert "neither a model checkpoint nor a run folder" in says
    assert main([*continual, "--out", str(tmp_path / "c"), "--init-from", str(base)]) == 0  # a run: its latest
    saved = json.loads((tmp_path / "c" / "run.json").read_text())
    assert saved["identity"]["init_from"] == str(base.resolve())


def test_an_out_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys, packed_train):
    (tmp_path / "a-file").write_text("mine")
    assert "a-file is a file" in one_line_error(capsys, pretrain(packed_train, tmp_path / "a-file", "--steps", "1"))
    assert (tmp_path / "a-file").read_text() == "mine"
    unwritable = Path("/sys/ctlab-test/run")  # a folder no process may create
    assert "cannot write to /sys/ctlab-test/run" in one_line_error(
        capsys, pretrain(packed_train, unwritable, "--steps", "1")
    )


def test_damaged_files_are_one_line_errors(tmp_path, capsys, packed_train):
    run = tmp_path / "run"
    assert main(pretrain(packed_train, run, "--steps", "2")) == 0
    capsys.readouterr()
    weights = checkpoints(run)[-1][1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "is damaged or truncated" in one_line_error(capsys, pretrain(packed_train, run, "--steps", "2"))
    eval_out = tmp_path / "early-exit"
    argv = ["eval", "early-exit", str(run), "--data", packed_train, "--out", str(eval_out)]
    assert "is damaged or truncated" in one_line_error(capsys, argv)
    damaged = Path(shutil.copytree(packed_train, tmp_path / "packed"))
    (damaged / "pack.json").write_text('{"format": "ctlab-pack/1", "tokens"')
    assert "pack.json is damaged" in one_line_error(capsys, pretrain(str(damaged), tmp_path / "other", "--steps", "1"))
    (damaged / "pack.json").write_text('{"format": "ctlab-pack/1"}')
    assert "is a damaged packed folder" in one_line_error(
        capsys, pretrain(str(damaged), tmp_path / "other", "--steps", "1")
    )
    (damaged / "pack.json").write_text("[1, 2]")
    says = one_line_error(capsys, pretrain(str(damaged), tmp_path / "other", "--steps", "1"))
    assert "is not a ctlab-pack/1 manifest" in says


def test_damaged_run_records_are_left_out_or_refused(tmp_path, capsys, packed_train):
    run = tmp_path / "run"
    assert main(pretrain(packed_train, run, "--steps", "2")) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0}\n[]\n{"step": "x"}\n')
    assert main(pretrain(packed_train, run, "--steps", "2")) == 0  # lines that are not records are left out
    assert "step 2: loss" in capsys.readouterr().out
    (checkpoints(run)[-1][1] / "trainer_state.json").write_text("[]")
    assert "trainer_state.json is damaged" in one_line_error(capsys, pretrain(packed_train, run, "--steps", "2"))


def test_the_run_folder_loads_as_a_tokenizer(tmp_path, packed_train, train_tokenizer):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    assert main(pretrain(packed_train, run, "--steps", "1")) == 0
    text = "新华社北京电 国务院总理今天会见了外国客人。"
    assert (
        AutoTokenizer.from_pretrained(run)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(train_tokenizer)(text)["input_ids"]
    )
    assert yaml.safe_load((run / "run.json").read_text())["kind"] == "pretrain"
