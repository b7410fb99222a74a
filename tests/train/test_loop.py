"""The shared training loop with a second objective (a classification, ``toy_objective.py``):
gradient accumulation, two processes and a resume after SIGKILL during a save each give the
steps that one process takes with the whole batch, and the objective learns its task. The
pretraining tests check the same invariances for the first objective."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from interrupt import kill_during_save
from safetensors.torch import load_file
from toy_objective import ToyConfig, train

from ctlab.config import to_dict
from ctlab.errors import UserError
from ctlab.runs import Metrics, checkpoints
from ctlab.train.loop import micro_batch_generator

TOY = Path(__file__).with_name("toy_objective.py")
STEP_KEYS = ("loss", "accuracy", "lr", "grad_norm", "tokens")


def make(out: Path, **changes) -> ToyConfig:
    fields = dict(out=str(out), steps=8, lr=3e-3, warmup_steps=2, log_every=1, eval_every=4, checkpoint_every=2)
    return ToyConfig(**{**fields, "batch_size": 4, "device": "cpu", **changes})


def steps(run) -> dict[int, dict]:
    return {r["step"]: r for r in Metrics(run.out).read() if "loss" in r}


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(checkpoints(run.out)[-1][1] / "model.safetensors")


def assert_same_run(a, b, tolerance: float = 1e-5) -> None:
    got, expected = steps(a), steps(b)
    assert sorted(got) == sorted(expected) == list(range(1, a.steps + 1))
    for step in got:
        for key in STEP_KEYS:
            assert got[step][key] == pytest.approx(expected[step][key], rel=tolerance, abs=tolerance), (step, key)
    for name, tensor in weights(a).items():
        torch.testing.assert_close(tensor, weights(b)[name], rtol=tolerance, atol=tolerance, msg=name)


def write(config: ToyConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def test_gradient_accumulation_gives_the_same_steps(tmp_path):
    whole, split = make(tmp_path / "whole"), make(tmp_path / "split", batch_size=2, grad_accum=2)
    train(whole)
    train(split)
    assert_same_run(split, whole)
    # the means logged are over the whole global batch: accuracy is a share of its 4 rows
    assert {r["accuracy"] * 4 % 1 for r in steps(whole).values()} == {0.0}


def test_two_processes_equal_one_process(tmp_path):
    """torchrun, 2 CPU processes of 2 rows each == 1 process of 2 micro-batches of 2 rows."""
    parallel, single = make(tmp_path / "ddp", batch_size=2), make(tmp_path / "single", batch_size=2, grad_accum=2)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc-per-node", "2", str(TOY), str(write(parallel, tmp_path / "c.yaml"))]
    result = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train(single)
    assert_same_run(parallel, single)
    state = json.loads((checkpoints(parallel.out)[-1][1] / "trainer_state.json").read_text())
    assert (state["processes"], state["parallel"], state["data"]["position"]) == (2, "ddp", 8 * 4)


def test_resume_after_sigkill_during_a_save_equals_an_uninterrupted_run(tmp_path):
    uninterrupted, killed = make(tmp_path / "whole"), make(tmp_path / "killed")
    train(uninterrupted)
    command = [sys.executable, str(TOY), str(write(killed, tmp_path / "c.yaml"))]
    kill_during_save(command, tmp_path, step=6)
    assert [step for step, _ in checkpoints(killed.out)] == [4]
    train(killed)  # the same run again: it resumes from step 4
    assert_same_run(killed, uninterrupted, 1e-6)
    evals = [r["step"] for r in Metrics(killed.out).read() if "eval" in r]
    assert evals == [0, 4, 8]  # nothing logged twice


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    config = make(tmp_path / "run", steps=2)
    train(config)
    more = make(tmp_path / "run", steps=4)
    with pytest.raises(UserError, match="other settings .*steps: 2 -> 4"):
        train(more)


def test_the_objective_learns_its_task(tmp_path):
    """Held-out rows: chance is 50%; 100 steps of 16 rows take the tiny decoder above 90%."""
    config = make(tmp_path / "learn", steps=100, batch_size=16, warmup_steps=5, eval_every=100, checkpoint_every=100)
    final = train(config)
    before = next(r["eval"] for r in Metrics(config.out).read() if r["step"] == 0)
    assert before["heldout"]["accuracy"] < 0.7
    assert final["eval"]["heldout"]["accuracy"] > 0.9, final["eval"]


def test_micro_batch_generators_are_stable_and_distinct():
    def draw(*key: int) -> list[float]:
        return torch.rand(4, generator=micro_batch_generator(*key)).tolist()

    assert draw(0, 3, 0, 1) == draw(0, 3, 0, 1)  # the same on resume, in any process
    keys = [(0, 3, 0, 1), (1, 3, 0, 1), (0, 4, 0, 1), (0, 3, 1, 1), (0, 3, 0, 0)]
    assert len({tuple(draw(*key)) for key in keys}) == len(keys)
