"""`ctlab train pretrain` on real Chinese text with tiny models: gradient-accumulation and
data-parallel invariance (DDP and FSDP), resume after SIGKILL (also during a checkpoint save), LayerSkip,
continual pretraining with replay, MoE / MH-MoE logging, learning below the unigram entropy,
transformers interop of checkpoints, config errors, metrics and the loss curve."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from interrupt import kill_during_save
from safetensors.torch import load_file

from ctlab.cli import main
from ctlab.config import ConfigError, to_dict
from ctlab.runs import checkpoint_dir, checkpoints, write_json
from ctlab.tokens.loader import PackedLoader
from ctlab.tokens.packed import PackedDataset
from ctlab.train import loop as loop_module
from ctlab.train.config import PretrainConfig
from ctlab.train.distributed import Distributed
from ctlab.train.loop import learning_rate
from ctlab.train.pretrain import PackedBatches, pretrain

TINY_MODEL = {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}
STEP_KEYS = ("loss", "lr", "grad_norm", "tokens")


# -- helpers ------------------------------------------------------------------------------------------


def make_config(data: str, out: Path, **changes) -> PretrainConfig:
    fields = {
        "data": data,
        "out": str(out),
        "preset": "tiny",
        "model": dict(TINY_MODEL),
        "steps": 8,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "log_every": 1,
        "eval_every": 4,
        "eval_batches": 4,
        "checkpoint_every": 2,
        "seed": 0,
        "device": "cpu",
    }
    fields.update(changes)
    return PretrainConfig(**fields)


def write_config(config: PretrainConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def records(run: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_records(run: str | Path) -> dict[int, dict]:
    """The training records by step; a step logged twice (redone after a resume) counts as logged last."""
    return {r["step"]: r for r in records(run) if "loss" in r}


def eval_records(run: str | Path) -> dict[int, dict]:
    return {r["step"]: r["eval"] for r in records(run) if "eval" in r}


def final_weights(run: str | Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoints(run)[-1][1] / "model.safetensors")


def assert_steps_close(a: dict[int, dict], b: dict[int, dict], tolerance: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        for key in STEP_KEYS:
            assert a[step][key] == pytest.approx(b[step][key], rel=tolerance, abs=tolerance), (step, key)


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tolerance: float = 5e-5) -> None:
    """Equal weights after runs that sum the same gradients in another order. AdamW divides each
    moment by its root mean square, so an element whose gradients are near zero takes the
    rounding of the summation order into its step: on an AVX-512 Xeon one element in 8,192
    moved 1.04e-5 after 5 steps at lr 3e-3. The default bound is 1.7% of one step at that
    rate; a lost or doubled micro-batch moves weights by a good part of a step."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tolerance, atol=tolerance, msg=name)


def train(config: PretrainConfig) -> dict:
    return pretrain(config, progress=False)


def run_cli(
    config_file: Path, env_extra: dict | None = None, torchrun: bool = False, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if torchrun:
        launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m"]
    else:
        launcher = [sys.executable, "-m"]
    command = [*launcher, "ctlab.cli", "train", "pretrain", "--config", str(config_file), "--no-progress", *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


class Stop(Exception):
    pass


# -- run A: the reference run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, packed_train, packed_heldout, packed_english) -> PretrainConfig:
    """8 steps, a checkpoint every 2, held-out evaluation (zh, en) every 4, run to completion in-process."""
    eval_data = {"zh": packed_heldout, "en": packed_english}
    config = make_config(packed_train, tmp_path_factory.mktemp("run-a") / "run", eval_data=eval_data)
    train(config)
    return config


def clone_config(config: PretrainConfig, out: Path) -> PretrainConfig:
    return dataclasses.replace(config, out=str(out), model=dict(config.model), eval_data=dict(config.eval_data))


# -- invariance ---------------------------------------------------------------------------------------


def test_gradient_accumulation_gives_the_same_steps(tmp_path, packed_train):
    whole = make_config(packed_train, tmp_path / "whole", steps=5, batch_size=4, grad_accum=1)
    split = make_config(packed_train, tmp_path / "split", steps=5, batch_size=2, grad_accum=2)
    train(whole)
    train(split)
    assert_steps_close(step_records(whole.out), step_records(split.out))
    assert_weights_close(final_weights(whole.out), final_weights(split.out))
    # the steps did train: the weights moved away from the initialisation
    assert step_records(whole.out)[5]["loss"] < step_records(whole.out)[1]["loss"]


def trainer_state(run: str | Path, step: int) -> dict:
    return json.loads((checkpoint_dir(run, step) / "trainer_state.json").read_text())


def resume_from_step_2(config_file: Path, run: str, flags: tuple[str, ...]) -> None:
    """Delete the step-4 checkpoint of a finished 4-step run and rerun it under torchrun with ``flags``."""
    assert [step for step, _ in checkpoints(run)] == [2, 4]
    shutil.rmtree(checkpoint_dir(run, 4))
    result = run_cli(config_file, torchrun=True, flags=flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4]  # resumed at step 2, not from scratch


def test_data_parallel_two_processes_equal_one_process(tmp_path, packed_train):
    """torchrun, 2 CPU processes (gloo), batch 2 each == 1 process, batch 2 × 2 micro-batches.
    The run then resumes from its step-2 checkpoint sharded (FSDP) and ends at the same weights."""
    parallel = make_config(packed_train, tmp_path / "ddp", steps=4, batch_size=2, grad_accum=1, keep_every=2)
    single = make_config(packed_train, tmp_path / "single", steps=4, batch_size=2, grad_accum=2)
    config_file = write_config(parallel, tmp_path / "ddp.yaml")
    result = run_cli(config_file, torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("step 4: loss") == 1  # the first process reports
    train(single)
    assert_steps_close(step_records(parallel.out), step_records(single.out))
    assert_weights_close(final_weights(parallel.out), final_weights(single.out))
    state = trainer_state(parallel.out, 4)
    assert state["data"]["main"]["position"] == 4 * 4  # the stream advanced by the global batch each step
    assert (state["processes"], state["parallel"]) == (2, "ddp")

    resume_from_step_2(config_file, parallel.out, ("--parallel", "fsdp"))
    assert trainer_state(parallel.out, 4)["parallel"] == "fsdp"
    assert_steps_close(step_records(parallel.out), step_records(single.out))
    assert_weights_close(final_weights(parallel.out), final_weights(single.out))


def optimizer_state(run: str | Path, step: int) -> dict:
    return torch.load(checkpoint_dir(run, step) / "optimizer.pt", weights_only=True)


def test_fsdp_two_processes_equal_one_process_and_resume(tmp_path, packed_train):
    """torchrun, 2 CPU processes sharding the model (FSDP), 2 micro-batches of 2 each, with the
    early-exit loss (3 layers: the first layer's exit goes through the shared head outside
    forward) == 1 process, 4 micro-batches of 2. The gathered checkpoints (weights and optimiser
    state) match, and the run resumed from its step-2 checkpoint under DDP ends at the same weights."""
    layerskip = {"early_exit": "rotational", "rotation": 2}
    model = {**TINY_MODEL, "num_layers": 3}
    common = {"steps": 4, "batch_size": 2, "layerskip": layerskip, "keep_every": 2, "model": model}
    sharded = make_config(packed_train, tmp_path / "fsdp", grad_accum=2, parallel="fsdp", **common)
    single = make_config(packed_train, tmp_path / "single", grad_accum=4, **common)
    config_file = write_config(sharded, tmp_path / "fsdp.yaml")
    result = run_cli(config_file, torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (trainer_state(sharded.out, 4)["processes"], trainer_state(sharded.out, 4)["parallel"]) == (2, "fsdp")
    train(single)
    assert_steps_close(step_records(sharded.out), step_records(single.out))
    assert_weights_close(final_weights(sharded.out), final_weights(single.out))
    sharded_optimizer, single_optimizer = optimizer_state(sharded.out, 4), optimizer_state(single.out, 4)
    assert sharded_optimizer["state"].keys() == single_optimizer["state"].keys()
    for name, moments in sharded_optimizer["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            expected = single_optimizer["state"][name][key]
            assert (moments[key] - expected).norm() <= 1e-4 * expected.norm(), (name, key)

    resume_from_step_2(config_file, sharded.out, ("--parallel", "ddp"))
    assert trainer_state(sharded.out, 4)["parallel"] == "ddp"
    assert_weights_close(final_weights(sharded.out), final_weights(single.out))
    assert_steps_close(step_records(sharded.out), step_records(single.out))


# -- resume -------------------------------------------------------------------------------------------


def test_run_a_keeps_only_the_last_checkpoint(run_a):
    assert [step for step, _ in checkpoints(run_a.out)] == [8]
    assert not list((Path(run_a.out) / "checkpoints").glob(".tmp-*"))
    state = json.loads((Path(run_a.out) / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["tokens_seen"] == 8 * 4 * 64
    assert state["data"] == {"main": {"position": 8 * 4, "seed": 0, "global_batch_size": 4}, "replay": None}


def test_resume_after_sigkill_during_a_save_equals_an_uninterrupted_run(tmp_path, run_a):
    """Run B (the CLI, run A's config) is SIGKILLed inside the save of step 6, once step 4's
    checkpoint is complete; the same command then finishes it exactly as run A went."""
    config_b = clone_config(run_a, tmp_path / "run-b")
    config_file = write_config(config_b, tmp_path / "b.yaml")
    command = [sys.executable, "-m", "ctlab.cli", "train", "pretrain", "--config", str(config_file), "--no-progress"]
    kill_during_save(command, tmp_path, step=6)
    checkpoint_folder = Path(config_b.out) / "checkpoints"
    staging = checkpoint_folder / ".tmp-step-00000006"
    assert (staging / "model.safetensors").is_file() and not (staging / "trainer_state.json").exists()
    assert [step for step, _ in checkpoints(config_b.out)] == [4]
    killed_steps = step_records(config_b.out)
    assert max(killed_steps) == 6  # steps 5 and 6 were done, and will be done again

    result = run_cli(config_file)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 8: loss" in result.stdout
    assert [step for step, _ in checkpoints(config_b.out)] == [8]
    assert not staging.exists()
    a, b = step_records(run_a.out), step_records(config_b.out)
    assert_steps_close({s: a[s] for s in (5, 6, 7, 8)}, {s: b[s] for s in (5, 6, 7, 8)}, 1e-6)
    assert_steps_close({s: a[s] for s in (5, 6)}, {s: killed_steps[s] for s in (5, 6)}, 1e-6)  # the first try
    eval_a, eval_b = eval_records(run_a.out), eval_records(config_b.out)
    assert sorted(eval_b[8]) == ["en", "zh"]
    for name in eval_a[8]:
        assert eval_b[8][name] == pytest.approx(eval_a[8][name], rel=1e-6)
    assert_weights_close(final_weights(run_a.out), final_weights(config_b.out), 1e-6)
    state_a = json.loads((checkpoints(run_a.out)[-1][1] / "trainer_state.json").read_text())
    state_b = json.loads((checkpoints(config_b.out)[-1][1] / "trainer_state.json").read_text())
    assert state_a == state_b


def test_a_leftover_staging_folder_is_ignored(tmp_path, run_a, monkeypatch):
    """A run stopped after step 4's checkpoint, with a half-written `.tmp-step-00000006` beside it
    (a kill during the next save), resumes from step 4 and ends as run A."""
    config = clone_config(run_a, tmp_path / "run")
    original = loop_module.save_checkpoint

    def save_then_stop(run, step, *args, **kwargs):
        path = original(run, step, *args, **kwargs)
        if step == 4:
            raise Stop
        return path

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train(config)
    monkeypatch.setattr(loop_module, "save_checkpoint", original)
    staging = Path(config.out) / "checkpoints" / ".tmp-step-00000006"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\x00" * 10)  # truncated
    (staging / "trainer_state.json").write_text('{"step": 6')
    assert [step for step, _ in checkpoints(config.out)] == [4]

    final = train(config)
    assert final["step"] == 8
    assert not staging.exists()
    a, b = step_records(run_a.out), step_records(config.out)
    assert_steps_close({s: a[s] for s in (5, 6, 7, 8)}, {s: b[s] for s in (5, 6, 7, 8)}, 1e-6)
    assert_weights_close(final_weights(run_a.out), final_weights(config.out), 1e-6)


def test_rerunning_a_finished_run_is_harmless(tmp_path, run_a, capsys):
    config = clone_config(run_a, tmp_path / "run")
    config.steps = 2
    config.eval_data = {}
    train(config)
    assert main(["train", "pretrain", "--config", str(write_config(config, tmp_path / "c.yaml")), "--no-progress"]) == 0
    assert "step 2" in capsys.readouterr().out


def test_a_run_resumes_with_other_runtime_settings_but_not_other_training(tmp_path, packed_train, capsys):
    config = make_config(packed_train, tmp_path / "run", steps=2, checkpoint_every=2)
    train(config)
    config_file = str(write_config(config, tmp_path / "c.yaml"))
    base = ["train", "pretrain", "--config", config_file, "--no-progress"]
    # how it runs and is recorded may change
    assert main([*base, "--device", "cpu", "--parallel", "fsdp", "--set", "compile=true"]) == 0
    assert "step 2" in capsys.readouterr().out
    assert main([*base, "--set", "log_every=5", "--set", "checkpoint_every=7", "--set", "keep_every=1"]) == 0
    assert "step 2" in capsys.readouterr().out
    # what it computes may not
    assert_usage_error(capsys, [*base, "--lr", "0.5"], "other settings (lr: 0.003 -> 0.5)")
    assert_usage_error(capsys, [*base, "--set", "model.num_layers=3"], "other settings (model.num_layers: 2 -> 3)")


# -- LayerSkip ----------------------------------------------------------------------------------------


def test_layerskip_off_equals_plain_training(tmp_path, packed_train):
    """p_max = 0 and no early exit: the other LayerSkip settings change nothing, bit for bit."""
    plain = make_config(packed_train, tmp_path / "plain", steps=6, checkpoint_every=6)
    off = make_config(
        packed_train,
        tmp_path / "off",
        steps=6,
        checkpoint_every=6,
        layerskip={"p_max": 0.0, "early_exit": "none", "e_scale": 0.5, "rotation": 3, "scale_by_step": False},
    )
    train(plain)
    train(off)
    a, b = step_records(plain.out), step_records(off.out)
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in b]
    for name, tensor in final_weights(plain.out).items():
        assert torch.equal(tensor, final_weights(off.out)[name]), name


def test_early_exit_with_zero_e_scale_equals_plain_training(tmp_path, packed_train):
    """e_scale = 0 puts all the early-exit weight on the last layer: the loss is the plain loss."""
    plain = make_config(packed_train, tmp_path / "plain", steps=4, checkpoint_every=4)
    layerskip = {"early_exit": "rotational", "e_scale": 0}
    exits = make_config(packed_train, tmp_path / "exits", steps=4, checkpoint_every=4, layerskip=layerskip)
    train(plain)
    train(exits)
    assert_steps_close(step_records(plain.out), step_records(exits.out), 1e-7)
    assert_weights_close(final_weights(plain.out), final_weights(exits.out), 1e-7)


def test_layer_dropout_and_early_exit_change_training(tmp_path, packed_train):
    """4 layers: with 2, layer 0's exit weight e(0) = 0 leaves nothing for the early-exit loss to add."""
    model = {**TINY_MODEL, "num_layers": 4}
    plain = make_config(packed_train, tmp_path / "plain", model=model, steps=5, checkpoint_every=5)
    dropout = make_config(
        packed_train, tmp_path / "dropout", model=model, steps=5, checkpoint_every=5, layerskip={"p_max": 0.5}
    )
    exits = make_config(
        packed_train,
        tmp_path / "exits",
        model=model,
        steps=5,
        checkpoint_every=5,
        layerskip={"early_exit": "rotational"},
    )
    for config in (plain, dropout, exits):
        train(config)
    a, b, c = step_records(plain.out), step_records(dropout.out), step_records(exits.out)
    # S(0) = 0: no layer is dropped in the first step; after it the runs part
    assert b[1]["loss"] == a[1]["loss"]
    assert any(abs(a[s]["loss"] - b[s]["loss"]) > 1e-4 for s in range(2, 6))
    # the early-exit loss changes the gradients (the logged loss is the last layer's CE)
    assert c[1]["loss"] == pytest.approx(a[1]["loss"], rel=1e-6)
    assert any(abs(a[s]["loss"] - c[s]["loss"]) > 1e-4 for s in range(2, 6))


# -- continual pretraining ----------------------------------------------------------------------------


def test_continual_pretraining_from_a_checkpoint_with_replay(tmp_path, capsys, run_a, packed_english, packed_train):
    start = checkpoints(run_a.out)[-1][1]
    config = make_config(
        packed_english,
        tmp_path / "continual",
        init_from=str(start),
        preset=None,
        model={},
        replay_data=packed_train,
        replay_ratio=0.25,
        steps=6,
        warmup_steps=3,
        lr=1e-3,
        eval_every=6,
        checkpoint_every=6,
        eval_data={"zh": run_a.eval_data["zh"]},
    )
    assert main(["train", "pretrain", "--config", str(write_config(config, tmp_path / "c.yaml")), "--no-progress"]) == 0
    evals = eval_records(config.out)
    # it starts from run A's weights: the step-0 evaluation is run A's last one
    assert evals[0]["zh"]["loss"] == pytest.approx(eval_records(run_a.out)[8]["zh"]["loss"], rel=1e-6)
    # the summary reports the old domain's perplexity before and after
    summary = capsys.readouterr().out
    assert f"zh ppl {evals[0]['zh']['ppl']:.2f} at step 0 -> {evals[6]['zh']['ppl']:.2f}" in summary
    # each micro-batch of 4 rows holds 3 rows of the new data and 1 of the replayed data
    state = json.loads((checkpoints(config.out)[-1][1] / "trainer_state.json").read_text())
    main_rows, replay_rows = {"seed": 0, "global_batch_size": 3}, {"seed": 0, "global_batch_size": 1}
    assert state["data"] == {"main": {"position": 6 * 3, **main_rows}, "replay": {"position": 6 * 1, **replay_rows}}
    # the learning rate re-warms from zero and re-decays over the new run
    steps = step_records(config.out)
    assert steps[1]["lr"] == pytest.approx(config.lr / config.warmup_steps)
    assert [steps[s]["lr"] for s in range(1, 7)] == pytest.approx([learning_rate(config, s) for s in range(6)])
    assert steps[3]["lr"] == pytest.approx(config.lr)
    assert steps[6]["lr"] < config.lr


def test_batch_source_draws_the_replay_rows(tmp_path, packed_english, packed_train):
    config = make_config(packed_english, tmp_path / "x", replay_data=packed_train, replay_ratio=0.25)
    source = PackedBatches(config, Distributed())
    main_loader = PackedLoader(packed_english, 3, config.seed)
    replay_loader = PackedLoader(packed_train, 1, config.seed)
    main_data, replay_data = PackedDataset(packed_english), PackedDataset(packed_train)
    for _ in range(3):
        batch = source.next()
        expected = [main_data[i]["input_ids"] for i in main_loader.next_indices()]
        expected += [replay_data[i]["input_ids"] for i in replay_loader.next_indices()]
        assert batch["input_ids"].shape == (4, 64)
        assert torch.equal(batch["input_ids"], torch.from_numpy(np.stack(expected)))
    assert source.state()["main"]["position"] == 9 and source.state()["replay"]["position"] == 3


# -- MoE and MH-MoE -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", ["moe", "mhmoe"])
def test_routed_models_log_expert_use(tmp_path, packed_train, ffn):
    model = {**TINY_MODEL, "num_experts": 8, "experts_per_token": 2, "expert_intermediate_size": 32, "mh_heads": 4}
    config = make_config(packed_train, tmp_path / ffn, preset=f"tiny-{ffn}", model=model, steps=3, checkpoint_every=3)
    train(config)
    for record in step_records(config.out).values():
        assert math.isfinite(record["loss"])
        assert record["aux_loss"] > 0 and math.isfinite(record["aux_loss"])
        assert 0 <= record["expert_share_min"] <= 1 / 8 <= record["expert_share_max"] <= 1
        if ffn == "moe":
            assert record["expert_activation"] == pytest.approx(2 / 8)  # every token reaches k of E
        else:
            assert record["expert_activation"] > 2 / 8  # sub-tokens reach more experts


# -- learning -----------------------------------------------------------------------------------------


def test_a_tiny_model_learns_well_below_the_unigram_entropy(tmp_path, packed_train, packed_heldout, unigram_entropy):
    """The unigram entropy of the training tokens is about 5.7 nats; 200 steps of 8 × 64 tokens
    take the held-out loss to about 4.8."""
    config = make_config(
        packed_train,
        tmp_path / "learn",
        model={**TINY_MODEL, "hidden_size": 128, "intermediate_size": 256},
        steps=200,
        batch_size=8,
        lr=1.5e-3,
        warmup_steps=10,
        log_every=10,
        eval_every=200,
        eval_batches=8,
        checkpoint_every=200,
        eval_data={"zh": packed_heldout},
    )
    final = train(config)
    evals = eval_records(config.out)
    assert evals[0]["zh"]["loss"] > unigram_entropy  # untrained: about ln(vocabulary)
    assert final["eval"]["zh"]["loss"] < unigram_entropy - 0.5, (final["eval"], unigram_entropy)


# -- checkpoints in transformers ----------------------------------------------------------------------


def test_checkpoints_load_in_transformers_with_equal_logits(run_a, train_tokenizer):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctlab.model.hf import load_model

    folder = checkpoints(run_a.out)[-1][1]
    text = "新华社北京电 国务院总理今天在人民大会堂会见了来访的外国客人。"
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    ours_tokenizer = Tokenizer.from_file(str(train_tokenizer / "tokenizer.json"))
    assert ids == ours_tokenizer.encode(text, add_special_tokens=False).ids
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = load_model(folder).eval()
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        expected = ours(input_ids).logits
        got = hf_model(input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# -- config errors ------------------------------------------------------------------------------------


def assert_usage_error(capsys, argv: list[str], says: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctlab: error: "), err
    assert says in err


def test_config_errors_exit_2_with_one_line(tmp_path, capsys, packed_train):
    out = str(tmp_path / "run")
    base = ["train", "pretrain", "--no-progress"]
    assert_usage_error(capsys, [*base, "--out", out], "data")
    assert_usage_error(capsys, [*base, "--data", packed_train, "--out", out, "--set", "bogus=1"], "bogus")
    assert_usage_error(capsys, [*base, "--data", packed_train, "--out", out, "--preset", "huge"], "huge")
    assert_usage_error(capsys, [*base, "--config", str(tmp_path / "missing.yaml")], "missing.yaml")
    sharded = [*base, "--data", packed_train, "--out", out, "--parallel", "fsdp"]
    assert_usage_error(capsys, [*sharded, "--set", "layerskip.p_max=0.1"], "parallel: ddp")
    if not torch.cuda.is_available():
        assert_usage_error(capsys, [*base, "--data", packed_train, "--out", out, "--device", "cuda"], "no GPU")
    assert not Path(out).exists()
    not_packed = tmp_path / "not-packed"
    not_packed.mkdir()
    assert_usage_error(capsys, [*base, "--data", str(not_packed), "--out", out], "not a packed folder")
    # a run folder holding another config is left untouched
    other = tmp_path / "other"
    other.mkdir()
    write_json(other / "run.json", {"kind": "pretrain", "identity": {"steps": 99}})
    (other / "checkpoints" / "step-00000001").mkdir(parents=True)  # a step was done
    (other / "checkpoints" / "step-00000001" / "trainer_state.json").write_text('{"step": 1}')
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    argv = [*base, "--data", packed_train, "--out", str(other), "--steps", "3"]
    assert_usage_error(capsys, argv, "holds a pretrain run with other settings")
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    # a non-empty folder that is not a run
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert_usage_error(capsys, [*base, "--data", packed_train, "--out", str(stranger)], "not empty")
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


def test_config_error_in_a_subprocess_has_no_traceback(tmp_path, packed_train):
    config = make_config(packed_train, tmp_path / "run", preset="huge")
    result = run_cli(write_config(config, tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ctlab: error: unknown model preset")


def test_a_refused_data_folder_leaves_no_run_folder(tmp_path, capsys, packed_train):
    out = tmp_path / "run"
    not_packed = tmp_path / "not-packed"
    not_packed.mkdir()
    assert main(["train", "pretrain", "--data", str(not_packed), "--out", str(out), "--steps", "1"]) == 2
    capsys.readouterr()
    assert not out.exists() or not any(out.iterdir())


def test_an_unknown_model_field_is_a_usage_error(tmp_path, capsys, packed_train):
    argv = ["train", "pretrain", "--data", packed_train, "--out", str(tmp_path / "run"), "--set", "model.bogus=1"]
    assert_usage_error(capsys, argv, "bogus")


def test_load_refuses_unknown_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: x\nout: y\nsteps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="^training config: unknown field 'learning_rate'$"):
        PretrainConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a training config is a mapping of fields, not list"):
        PretrainConfig.load(path)
    path.write_text("data: x\nsteps: 7\nlayerskip: {p_max: 0.2}\n")
    config = PretrainConfig.load(path)
    assert config.steps == 7 and config.layerskip.p_max == 0.2


def test_load_refuses_unknown_layerskip_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: x\nout: y\nlayerskip: {bogus: 1}\n")
    with pytest.raises(ConfigError, match="^training config: layerskip: unknown field 'bogus'$"):
        PretrainConfig.load(path)


# -- metrics and the loss curve -----------------------------------------------------------------------


def test_metrics_and_loss_curve(run_a):
    run = Path(run_a.out)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "run.json").read_text())
    assert saved["kind"] == "pretrain" and saved["config"]["steps"] == 8
    assert saved["config"]["data"] == str(Path(run_a.data).resolve())
    steps = step_records(run)
    assert sorted(steps) == list(range(1, 9))
    for step, record in steps.items():
        assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= record.keys()
        assert record["tokens"] == step * 4 * 64
        assert record["lr"] == pytest.approx(learning_rate(run_a, step - 1))
        assert math.isfinite(record["loss"]) and record["grad_norm"] > 0 and record["tokens_per_s"] > 0
    evals = eval_records(run)
    assert sorted(evals) == [0, 4, 8]
    for result in evals.values():
        assert sorted(result) == ["en", "zh"]
        for held_out in result.values():
            assert held_out["ppl"] == pytest.approx(math.exp(held_out["loss"]))
            assert held_out["tokens"] > 0
    assert evals[8]["zh"]["loss"] < evals[0]["zh"]["loss"]


def test_moe_with_layer_dropout_and_accumulation_logs_only_the_layers_it_ran(packed_train, tmp_path):
    # with batch 1, a micro-batch whose one sample skips a routed layer has no statistics for it
    skips = {"p_max": 0.9, "scale_by_step": False}
    config = make_config(
        packed_train, tmp_path / "run", preset="tiny-moe", steps=4, batch_size=1, grad_accum=2, layerskip=skips
    )
    config.model["num_layers"] = 4
    final = pretrain(config, progress=False)
    assert final["step"] == 4
    assert 0.0 <= final["expert_share_min"] <= final["expert_share_max"] <= 1.0
