"""``ctlab data sde``, ``data constraints`` and ``data pairs``: fine-tuning and preference data.

Argument parsing only, and the design flags ``ctlab eval sde`` shares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctlab.args import positive_int
from ctlab.errors import UserError

DESIGN_FILE = "design.json"


def add_design_arguments(parser: argparse.ArgumentParser) -> None:
    """The sample-design options (default: the paper's recommendation, ES-SDE)."""
    design = parser.add_argument_group("sample design (default: ES-SDE)")
    design.add_argument("--instruction", choices=("first", "last", "none"), help="where the instruction goes (first)")
    design.add_argument("--input-loss", action="store_true", default=None, help="the loss also covers the prompt")
    design.add_argument("--format", choices=("natural", "lines", "json"), help="answer format (lines)")
    design.add_argument("--unmentioned", choices=("placeholder", "omit"), help="aspects not in the input (placeholder)")
    design.add_argument("--labels", choices=("text", "numeric"), help="classification labels (text)")
    design.add_argument("--reasoning", choices=("none", "cot", "after"), help="evidence before or after (none)")


def design_from(args: argparse.Namespace):
    from ctlab.align.sde import DESIGN_FIELDS, Design
    from ctlab.config import parse

    given = {name: getattr(args, name) for name in DESIGN_FIELDS if getattr(args, name) is not None}
    return parse(Design, given, "sample design")


def read_design_folder(folder: str):
    """The task and design an ``sde`` folder was written with."""
    from ctlab.align.sde import Design
    from ctlab.align.tasks import task
    from ctlab.config import parse
    from ctlab.runs import read_json

    path = Path(folder) / DESIGN_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a folder written by `ctlab data sde` (no {DESIGN_FILE})")
    data = read_json(path, "a sample-design record")
    try:
        return task(data["task"]), parse(Design, data["design"], str(path))
    except (KeyError, TypeError):
        raise UserError(f"{path} is damaged: write the folder again with `ctlab data sde`") from None


def _sde(args: argparse.Namespace) -> int:
    from ctlab.align.sde import sample
    from ctlab.align.tasks import task
    from ctlab.data.demo import write_jsonl
    from ctlab.runs import write_json

    chosen, design = task(args.task), design_from(args)
    design.check(chosen)
    out = Path(args.out)
    if out.exists() and (
        not out.is_dir() or any(p.name != DESIGN_FILE and not p.suffix == ".jsonl" for p in out.iterdir())
    ):
        raise UserError(f"{args.out} holds other files: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, limit in (("train", args.train), ("test", args.test)):
        records = chosen.records(split)[:limit]
        write_jsonl([sample(chosen, r, design) for r in records], out / f"{split}.jsonl")
        counts[split] = len(records)
    write_json(out / DESIGN_FILE, {"task": chosen.name, "design": design.__dict__, "records": counts})
    train_on = "all" if design.input_loss else "assistant"
    print(f"{chosen.name} in design {design.name()}: {counts['train']:,} train, {counts['test']:,} test conversations")
    print(f"train with: ctlab train sft --model MODEL --data {out / 'train.jsonl'} --train-on {train_on} --out RUN")
    return 0


def _constraints(args: argparse.Namespace) -> int:
    from ctlab.align.instructions import constrained_prompt, constraint_prompts, written_answer
    from ctlab.data.demo import write_jsonl
    from ctlab.runs import output_file

    for path in (args.out, args.sft):
        if path:
            output_file(path)
    records = constraint_prompts(args.count, args.min, args.max, args.seed, args.split, args.lang)
    write_jsonl(records, args.out)
    kinds = {c["kind"] for r in records for c in r["constraints"]}
    print(f"{len(records):,} prompts ({args.split} seeds) with {args.min}-{args.max} constraints of {len(kinds)} kinds")
    print(f"written: {args.out}")
    if args.sft:
        conversations = []
        for record in records:
            prompt, constraints = constrained_prompt(record)
            answer = written_answer(record["draft"], constraints, prompt)
            if answer is not None:
                turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                conversations.append({"messages": turns})
        write_jsonl(conversations, args.sft)
        unmet = len(records) - len(conversations)
        print(
            f"written: {args.sft} ({len(conversations):,} conversations whose answers satisfy every constraint; "
            f"{unmet:,} prompts left out: no rewrite satisfies them all)"
        )
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from ctlab.align.instructions import read_constraint_prompts
    from ctlab.align.pairs import build_pairs
    from ctlab.data.demo import write_jsonl
    from ctlab.infer.options import build_engine, sampling_params
    from ctlab.runs import output_file

    output_file(args.out)
    records = read_constraint_prompts(args.prompts)
    print(records.summary("constrained prompts"), file=sys.stderr)
    routes = ("sample", "correct") if args.route == "both" else (args.route,)
    engine, text = build_engine(args, max_batch=args.batch)
    params = sampling_params(args, [])
    items = records.items[: args.limit]
    pairs, missed = build_pairs(engine, text, items, args.samples, params, routes, not args.no_progress)
    if not pairs:
        raise UserError(f"no pair: every prompt's answers tied or had no correction ({dict(missed)})")
    write_jsonl(pairs, args.out)
    gaps = sum(p["passed"][0] - p["passed"][1] for p in pairs) / len(pairs)
    left = ", ".join(f"{count} {why}" for why, count in missed.items()) or "none"
    print(f"{len(pairs):,} pairs from {len(items):,} prompts (mean constraints gained {gaps:.2f}); no pair: {left}")
    print(f"written: {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from ctlab.align.tasks import SPLITS, TASKS
    from ctlab.infer.options import add_engine_arguments, add_sampling_arguments

    sde = commands.add_parser(
        "sde",
        help="fine-tuning conversations of a built-in Chinese task in one sample design (SDE)",
        description="Write train.jsonl and test.jsonl (conversations) and design.json for a built-in task "
        "(entities: People's Daily names; sentiment: review sentences), in one sample design "
        "(arXiv 2404.13033). The test split never enters train.",
    )
    sde.add_argument("--task", required=True, choices=TASKS, help="the built-in task")
    sde.add_argument("--out", required=True, metavar="DIR", help="output folder")
    sde.add_argument("--train", type=positive_int, help="train conversations (default: all)")
    sde.add_argument("--test", type=positive_int, default=500, help="test conversations (500)")
    add_design_arguments(sde)
    sde.set_defaults(handler=_sde)

    constraints = commands.add_parser(
        "constraints",
        help="prompts with 1-5 verifiable constraints over Chinese seed requests (IFEval-style)",
        description="Write JSONL prompts {prompt, request, constraints}: Chinese seed requests (news headlines, "
        "People's Daily sentences, reviews) each with 1-5 compatible verifiable constraints (arXiv 2404.15846). "
        "The test split's seeds never appear in the train split.",
    )
    constraints.add_argument("--out", required=True, metavar="JSONL", help="output file")
    constraints.add_argument("--count", type=positive_int, default=500, help="prompts (500)")
    constraints.add_argument("--min", type=positive_int, default=1, help="fewest constraints per prompt (1)")
    constraints.add_argument("--max", type=positive_int, default=5, help="most constraints per prompt (5)")
    constraints.add_argument("--split", choices=SPLITS, default="train", help="seed split (train)")
    constraints.add_argument("--lang", choices=("zh", "en"), default="zh", help="language of the constraints (zh)")
    constraints.add_argument("--seed", type=int, default=0, help="seed of the draws (0)")
    constraints.add_argument(
        "--sft", metavar="JSONL", help="also write conversations whose answers satisfy every constraint (for sft)"
    )
    constraints.set_defaults(handler=_constraints)

    pairs = commands.add_parser(
        "pairs",
        help="preference pairs from a model's own answers, judged by the constraint verifiers",
        description="Sample --samples answers per constrained prompt from MODEL; chosen satisfies the most "
        "constraints, rejected the fewest (route sample), and/or the worst answer corrected for one failed "
        "constraint is chosen over it (route correct, the paper's discrimination route). Writes JSONL pairs "
        "for `ctlab train dpo`. Answers are sampled at temperature 0.8 with seed 0 unless given.",
    )
    add_engine_arguments(pairs)
    pairs.add_argument("--prompts", required=True, metavar="JSONL", help="constrained prompts (`data constraints`)")
    pairs.add_argument("--out", required=True, metavar="JSONL", help="output pairs")
    pairs.add_argument("--samples", type=positive_int, default=4, help="answers sampled per prompt (4)")
    pairs.add_argument("--route", choices=("sample", "correct", "both"), default="both", help="(both)")
    pairs.add_argument("--limit", type=positive_int, help="prompts used (default: all)")
    pairs.add_argument("--batch", type=positive_int, default=16, help="requests decoded together (16)")
    pairs.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_arguments(pairs, max_new_tokens=160)
    pairs.set_defaults(handler=_pairs, temperature=0.8, seed=0)
