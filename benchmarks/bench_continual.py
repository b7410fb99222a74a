"""Forgetting in continual pretraining: a model pretrained on Chinese news continues on a new
mixture (English package READMEs and Python's standard library) with 0%, 25% and 50% of each
batch replayed from the Chinese data; old-domain (Chinese) and new-domain (English) held-out
perplexity before and after.

Data: one 8k ctlab tokenizer trained on all of it; the inews train split (normalised as
cleaning does) is the old domain, the READMEs + stdlib modules the new one; held out: the inews
test split and Python's pydoc topics. The base run and every continual run are the same
``ctlab train pretrain`` (tiny, batch 8 × 256, seed 0); the continual runs start from the base
run's last checkpoint (``init_from``), re-warm and re-decay the learning rate, and differ only
in ``replay_ratio``.

    python benchmarks/bench_continual.py [--base-steps 400] [--steps 300] [--ratios 0,0.25,0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from packed_data import packed_folder, tokenizer_folder

from ctlab.data.demo import (
    code_documents,
    english_documents,
    heldout_chinese,
    heldout_english,
    inews_articles,
    normalized,
)
from ctlab.report.tables import text_table
from ctlab.runs import Metrics, checkpoints
from ctlab.train.config import PretrainConfig
from ctlab.train.pretrain import pretrain


def prepare(out: Path) -> dict[str, str]:
    """Packed folders: old (zh), new (en + code), and the two held-out sets (built once)."""
    old = normalized([f"{title}\n{text}" for title, text in inews_articles(("train",))])
    new = english_documents() + code_documents()
    tokenizer = tokenizer_folder(out / "tokenizer", old + new)
    return {
        "old": packed_folder(out, "zh", old, tokenizer),
        "new": packed_folder(out, "en-code", new, tokenizer),
        "zh": packed_folder(out, "zh-heldout", heldout_chinese(), tokenizer),
        "en": packed_folder(out, "en-heldout", heldout_english(), tokenizer),
    }


def first_and_last_eval(run: Path) -> tuple[dict, dict]:
    evals = [r["eval"] for r in Metrics(run).read() if "eval" in r]
    return evals[0], evals[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=300, help="steps of each continual run")
    parser.add_argument("--ratios", default="0,0.25,0.5", help="replay ratios to compare")
    parser.add_argument("--out", default="runs/bench_continual")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(out)
    common = {"batch_size": 8, "eval_data": {"zh": data["zh"], "en": data["en"]}, "eval_batches": 16}
    base = PretrainConfig(
        data=data["old"],
        out=str(out / "base"),
        steps=args.base_steps,
        lr=2e-3,
        warmup_steps=30,
        eval_every=args.base_steps,
        checkpoint_every=args.base_steps,
        **common,
    )
    started = time.perf_counter()
    pretrain(base, progress=False)
    print(f"base: {args.base_steps} steps on zh ({time.perf_counter() - started:.0f} s)", flush=True)
    base_checkpoint = str(checkpoints(base.out)[-1][1])
    results = {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        run = out / f"continual-replay-{ratio:g}"
        config = PretrainConfig(
            data=data["new"],
            out=str(run),
            init_from=base_checkpoint,
            replay_data=data["old"] if ratio else None,
            replay_ratio=ratio,
            steps=args.steps,
            lr=1e-3,
            warmup_steps=30,
            eval_every=args.steps,
            checkpoint_every=args.steps,
            **common,
        )
        started = time.perf_counter()
        pretrain(config, progress=False)
        before, after = first_and_last_eval(run)
        results[f"{ratio:g}"] = {
            "before": before,
            "after": after,
            "forgetting_zh_loss": after["zh"]["loss"] - before["zh"]["loss"],
            "gain_en_loss": before["en"]["loss"] - after["en"]["loss"],
            "seconds": time.perf_counter() - started,
        }
        print(f"replay {ratio:.0%}: zh ppl {before['zh']['ppl']:.1f} -> {after['zh']['ppl']:.1f}", flush=True)
    rows = [("replay", "zh ppl before", "zh ppl after", "zh loss change", "en ppl before", "en ppl after")]
    for ratio, r in results.items():
        b, a = r["before"], r["after"]
        rows.append(
            (
                f"{float(ratio):.0%}",
                f"{b['zh']['ppl']:.1f}",
                f"{a['zh']['ppl']:.1f}",
                f"{r['forgetting_zh_loss']:+.3f}",
                f"{b['en']['ppl']:.1f}",
                f"{a['en']['ppl']:.1f}",
            )
        )
    print(text_table(rows))
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "base_steps": args.base_steps,
        "steps": args.steps,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
