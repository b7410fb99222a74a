"""Does preference training raise the constraint pass rate over SFT alone, and does TDPO keep
the sequential KL to the reference lower than DPO (arXiv 2404.11999) at small scale?

1. The pretrained ``tiny`` model of ``trained_model.py`` is fine-tuned (``--sft-steps`` steps
   of 8 packed rows of 512 tokens) on multi-constraint prompts whose answers satisfy every
   constraint (``ctlab data constraints --sft``: drafts from the seed's source rewritten by
   the constraints' own rewrites).
2. The SFT model answers ``--pair-prompts`` new training prompts 4 times (temperature 0.8);
   pairs by both routes (``ctlab data pairs``: most vs fewest constraints satisfied, and the
   worst answer vs its correction). Held-out pairs come the same way from test-split prompts.
3. From the SFT model, each preference loss trains ``--steps`` steps (8 pairs, β 0.1, the same
   lr and data): ``dpo``, ``tdpo1``, ``tdpo2`` (α 0.5), and ``dpo`` + ``sft``.
4. Every model answers the same held-out constrained prompts greedily: IFEval's prompt- and
   instruction-level accuracy, strict and loose. The held-out pairs give each preference run's
   reward accuracy and the sequential KL of chosen and rejected answers against the SFT model.

    python benchmarks/bench_preference.py [--sft-steps 250] [--steps 150] [--lr 5e-5]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from trained_model import trained_layerskip_model

from ctlab.align.config import PreferenceConfig, SFTConfig
from ctlab.align.instructions import constrained_prompt, constraint_prompts, written_answer
from ctlab.align.pairs import build_pairs
from ctlab.align.preference import train_preference
from ctlab.align.sft import train_sft
from ctlab.data.demo import write_jsonl
from ctlab.eval.constraints import evaluate_constraints
from ctlab.infer.engine import Engine
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.text import TextModel
from ctlab.model.hf import load_model
from ctlab.report.tables import text_table
from ctlab.runs import Metrics, write_json

OUT = Path("runs/bench_preference")
LOSSES = {"dpo": {"dpo": 1.0}, "tdpo1": {"tdpo1": 1.0}, "tdpo2": {"tdpo2": 1.0}, "dpo+sft": {"dpo": 1.0, "sft": 0.5}}


def engine_for(model_dir: Path) -> tuple[Engine, TextModel]:
    return Engine(load_model(model_dir).eval(), max_batch=16, context=512), TextModel(model_dir)


def pairs_file(model_dir: Path, records: list[dict], path: Path) -> int:
    if not path.exists():
        engine, text = engine_for(model_dir)
        items = [constrained_prompt(r) for r in records]
        params = SamplingParams(max_new_tokens=160, temperature=0.8, seed=0)
        pairs, _ = build_pairs(engine, text, items, 4, params, ("sample", "correct"), progress=False)
        write_jsonl(pairs, path)
    return len(path.read_text(encoding="utf-8").splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-prompts", type=int, default=6000)
    parser.add_argument("--sft-steps", type=int, default=250)
    parser.add_argument("--pair-prompts", type=int, default=400)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--eval-prompts", type=int, default=200)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base, _ = trained_layerskip_model()

    sft_records = constraint_prompts(args.sft_prompts, 1, 5, seed=0, split="train")
    conversations = []
    for record in sft_records:
        prompt, constraints = constrained_prompt(record)
        answer = written_answer(record["draft"], constraints, prompt)
        if answer is not None:
            conversations.append(
                {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
            )
    write_jsonl(conversations, OUT / "sft.jsonl")
    sft_run = OUT / "sft"
    sft = SFTConfig(
        model=str(base), data=str(OUT / "sft.jsonl"), out=str(sft_run), steps=args.sft_steps, batch_size=8,
        lr=1e-3, warmup_steps=10, checkpoint_every=args.sft_steps, device="cpu",
    )  # fmt: skip
    train_sft(sft, progress=False)

    train_pairs = pairs_file(sft_run, constraint_prompts(args.pair_prompts, 1, 5, 1, "train"), OUT / "pairs.jsonl")
    heldout_pairs = pairs_file(sft_run, constraint_prompts(100, 1, 5, 2, "test"), OUT / "pairs-heldout.jsonl")
    print(f"{len(conversations)} SFT conversations, {train_pairs} training pairs, {heldout_pairs} held-out pairs")

    eval_items = [constrained_prompt(r) for r in constraint_prompts(args.eval_prompts, 1, 5, 3, "test")]
    results = {"sft": evaluate_constraints(*engine_for(sft_run), eval_items, progress=False)}
    for name, losses in LOSSES.items():
        run = OUT / name
        config = PreferenceConfig(
            model=str(sft_run), data=str(OUT / "pairs.jsonl"), eval_data=str(OUT / "pairs-heldout.jsonl"),
            out=str(run), losses=losses, steps=args.steps, batch_size=8, lr=args.lr, beta=0.1, alpha=0.5,
            eval_every=args.steps, checkpoint_every=args.steps, eval_batches=100, device="cpu",
        )  # fmt: skip
        train_preference(config, progress=False)
        results[name] = evaluate_constraints(*engine_for(run), eval_items, progress=False)
        heldout = [r["eval"]["heldout"] for r in Metrics(run).read() if "eval" in r]
        results[name]["heldout_pairs"] = {"before": heldout[0], "after": heldout[-1]}
        print(f"{name}: prompt strict {results[name]['prompt_strict']:.1%}", flush=True)

    header = ["model", "prompt strict", "prompt loose", "instr. strict", "instr. loose", "reward acc."]
    rows = [[*header, "KL chosen", "KL rejected"]]
    levels = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
    for name, result in results.items():
        figures = [f"{result[k]:.1%}" for k in levels]
        after = result.get("heldout_pairs", {}).get("after")
        if after:
            figures += [
                f"{after['rewards/accuracies']:.1%}",
                f"{after['kl/chosen']:.2f}",
                f"{after['kl/rejected']:.2f}",
            ]
        rows.append([name, *figures] + ["–"] * (len(rows[0]) - 1 - len(figures)))
    print(text_table(rows))
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    write_json(OUT / "results.json", {"args": vars(args), "machine": machine, "results": results})
    print(json.dumps({k: v["prompt_strict"] for k, v in results.items()}))


if __name__ == "__main__":
    main()
