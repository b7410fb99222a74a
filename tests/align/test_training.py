"""`ctlab train sft` and `ctlab train dpo` as a user runs them: they learn, resume as if never
stopped, pack without changing the loss, precompute the reference without changing a step,
train MoE models, and refuse bad input in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from align_files import write_jsonl
from safetensors.torch import load_file

from ctlab.align.config import PreferenceConfig
from ctlab.align.packing import PackedExamples
from ctlab.align.preference import PreferenceTraining
from ctlab.align.records import conversation
from ctlab.align.sft import token_scores
from ctlab.align.start import StartingPoint
from ctlab.cli import main
from ctlab.model.hf import load_model, save_pretrained
from ctlab.runs import checkpoints
from ctlab.tokens.loader import collate
from ctlab.train import loop as loop_module
from ctlab.train.distributed import Distributed

QUICK = ["--device", "cpu", "--no-progress", "--set", "warmup_steps=1", "--set", "log_every=1"]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def conversations_file(tmp_path_factory, inews):
    records = [
        {
            "messages": [
                {"role": "user", "content": f"为这段新闻写标题：{text[:30]}"},
                {"role": "assistant", "content": title[:16]},
            ]
        }
        for title, text in inews[:60]
    ]
    return write_jsonl(tmp_path_factory.mktemp("sft") / "conversations.jsonl", records)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_packed_rows_score_as_the_conversations_alone(text_model, conversations_file):
    """Per-conversation attention and positions: the summed loss of a packed row is the sum of
    each conversation's loss computed on its own."""
    from ctlab.align.records import read_records

    start = StartingPoint(str(text_model))
    records = read_records(conversations_file, conversation, "conversations").items[:8]
    examples = [[start.encoder.conversation(r)] for r in records]
    packed = PackedExamples(examples, 256, start.pad_id, "mem")
    assert len(packed) < len(examples)  # several conversations share a row
    model = load_model(text_model)
    with torch.no_grad():
        batch = collate([packed[i] for i in range(len(packed))])
        together, _ = token_scores(model(batch["input_ids"], batch["position_ids"]).logits, batch["labels"])
        alone = 0.0
        for (example,) in examples:
            single = collate([PackedExamples([[example]], len(example.ids), start.pad_id, "one")[0]])
            alone += token_scores(model(single["input_ids"]).logits, single["labels"])[0].item()
    assert together.item() == pytest.approx(alone, rel=1e-5)


def test_sft_learns_and_its_checkpoint_loads_in_transformers(tmp_path, text_model, conversations_file, capsys):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "sft"
    argv = ["train", "sft", "--model", str(text_model), "--data", conversations_file, "--out", str(run)]
    argv += ["--eval-data", conversations_file, "--steps", "30", "--batch-size", "4", "--lr", "3e-3", *QUICK]
    assert main([*argv, "--set", "eval_every=30"]) == 0
    out = capsys.readouterr()
    assert "read 60 conversations from" in out.err and "heldout ppl" in out.out
    evals = [r["eval"]["heldout"] for r in metrics(run) if "eval" in r]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.5  # 30 steps on 60 replies: they are being learnt
    assert evals[-1]["accuracy"] > evals[0]["accuracy"]
    checkpoint = checkpoints(run)[-1][1]
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    ours = load_model(run).eval()
    ids = torch.tensor([[3, 50, 60, 70, 80]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, rtol=1e-4, atol=1e-4)
    assert (
        main(["generate", str(run), "--messages", '[{"role": "user", "content": "写标题"}]', "--max-new-tokens", "4"])
        == 0
    )


def test_dpo_resumes_as_if_never_stopped(tmp_path, text_model, pair_records, monkeypatch):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records)

    def argv(run):
        return ["train", "dpo", "--model", str(text_model), "--data", data, "--out", str(run), "--steps", "4"]

    extra = ["--batch-size", "3", "--lr", "1e-3", "--set", "checkpoint_every=2", *QUICK]
    assert main([*argv(tmp_path / "whole"), *extra]) == 0
    original = loop_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise Stop

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        main([*argv(tmp_path / "halves"), *extra])
    monkeypatch.setattr(loop_module, "save_checkpoint", original)
    assert [step for step, _ in checkpoints(tmp_path / "halves")] == [2]
    assert main([*argv(tmp_path / "halves"), *extra]) == 0
    whole = load_file(checkpoints(tmp_path / "whole")[-1][1] / "model.safetensors")
    halves = load_file(checkpoints(tmp_path / "halves")[-1][1] / "model.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(halves[name], tensor, rtol=0, atol=0, msg=name)
    losses = [r["loss"] for r in metrics(tmp_path / "whole") if "loss" in r]
    assert losses == [r["loss"] for r in metrics(tmp_path / "halves") if "loss" in r]


def test_precomputed_reference_gives_the_same_steps(tmp_path, text_model, pair_records):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records)
    records = {}
    for reference in ("auto", "model"):
        run = tmp_path / reference
        argv = ["train", "dpo", "--model", str(text_model), "--data", data, "--out", str(run), "--steps", "3"]
        assert main([*argv, "--batch-size", "4", "--lr", "1e-3", "--reference", reference, *QUICK]) == 0
        records[reference] = [r for r in metrics(run) if "loss" in r]
        assert (run / "preference.png").is_file() and (run / "loss.png").is_file()
    assert "kl/chosen" in records["model"][0] and "kl/chosen" not in records["auto"][0]
    for auto, kept in zip(records["auto"], records["model"], strict=True):
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected"):
            assert auto[key] == pytest.approx(kept[key], rel=1e-4, abs=1e-6), key


def test_tdpo_and_an_added_sft_loss_train_a_moe_model(tmp_path, text_model, pair_records):
    from ctlab.model.config import preset
    from ctlab.model.decoder import Decoder

    torch.manual_seed(0)
    shape = dict(vocab_size=600, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    moe = Decoder(preset("tiny-moe", **shape, expert_intermediate_size=32, max_position_embeddings=256))
    save_pretrained(moe, tmp_path / "moe", text_model)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records)
    settings = PreferenceConfig(
        model=str(tmp_path / "moe"), data=data, out=str(tmp_path / "run"), losses={"tdpo2": 1.0, "sft": 0.5}
    )
    objective = PreferenceTraining(settings, Distributed(rank=0, world_size=1, device=torch.device("cpu")))
    assert "reference" in objective.frozen  # TDPO reads the reference's distributions
    batch = objective.batches.next()
    loss = objective.loss(objective.model, batch, 0, torch.Generator())
    assert loss.regulariser is not None and loss.regulariser.item() > 0  # load balancing counted
    assert set(loss.logged) >= {"loss/tdpo2", "loss/sft", "kl/chosen", "kl/rejected", "rewards/accuracies"}
    assert loss.total.item() == pytest.approx(
        (loss.logged["loss/tdpo2"] + 0.5 * loss.logged["loss/sft"]).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--loss", "kto"], "unknown loss 'kto'"),
        (["--loss", "dpo:x"], "bad --loss 'dpo:x'"),
        (["--loss", "dpo:0"], "at least one loss needs a weight above 0"),
        (["--label-smoothing", "0.6"], "label_smoothing: must be less than 0.5"),
        (["--seq-len", "1000"], "longer than the model's context of 256"),
        (["--seq-len", "8"], "no pair fits in seq_len 8"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, text_model, pair_records, extra, says):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records)
    argv = ["train", "dpo", "--model", str(text_model), "--data", data, "--out", str(tmp_path / "run"), *QUICK]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("ctlab: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, text_model, conversations_file):
    bare = tmp_path / "bare"
    save_pretrained(load_model(text_model), bare)  # weights without a tokenizer
    empty = tmp_path / "empty.jsonl"
    empty.write_text("[]\n")
    cases = [
        (["--model", str(tmp_path / "nothing"), "--data", conversations_file], "does not exist"),
        (["--model", str(bare), "--data", conversations_file], "has no tokenizer"),
        (["--model", str(text_model), "--data", str(tmp_path / "none.jsonl")], "no such file"),
        (["--model", str(text_model), "--data", str(empty)], "no usable conversations"),
        (["--data", conversations_file], "model (the model to start from) is required"),
    ]
    for flags, says in cases:
        assert main(["train", "sft", *flags, "--out", str(tmp_path / "run"), *QUICK]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (flags, err)


def test_dpo_on_two_processes_equals_one_process_with_accumulation(tmp_path, text_model, pair_records):
    """torchrun, 2 CPU processes of 2 pairs each == 1 process of 2 micro-batches of 2 pairs."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records)
    common = ["--model", str(text_model), "--data", data, "--steps", "2", "--lr", "1e-3", "--batch-size", "2"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "ctlab.cli", "train", "dpo"]
    command += [*common, "--out", str(tmp_path / "ddp"), *QUICK]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", "dpo", *common, "--grad-accum", "2", "--out", str(tmp_path / "one"), *QUICK]) == 0
    ddp = load_file(checkpoints(tmp_path / "ddp")[-1][1] / "model.safetensors")
    one = load_file(checkpoints(tmp_path / "one")[-1][1] / "model.safetensors")
    for name, tensor in one.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert [r["loss"] for r in metrics(tmp_path / "ddp") if "loss" in r] == pytest.approx(
        [r["loss"] for r in metrics(tmp_path / "one") if "loss" in r], rel=1e-5
    )
