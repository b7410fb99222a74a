"""``ctlab data sde``: fine-tuning data of a built-in task written in one sample design.

Argument parsing only, and the design flags ``ctlab eval sde`` shares.
"""

from __future__ import annotations

import argparse
import json
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
    from ctlab.runs import atomic_write, write_json

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
        lines = "".join(json.dumps(sample(chosen, r, design), ensure_ascii=False) + "\n" for r in records)
        atomic_write(out / f"{split}.jsonl", lambda f, text=lines: f.write(text.encode()))
        counts[split] = len(records)
    write_json(out / DESIGN_FILE, {"task": chosen.name, "design": design.__dict__, "records": counts})
    train_on = "all" if design.input_loss else "assistant"
    print(f"{chosen.name} in design {design.name()}: {counts['train']:,} train, {counts['test']:,} test conversations")
    print(f"train with: ctlab train sft --model MODEL --data {out / 'train.jsonl'} --train-on {train_on} --out RUN")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from ctlab.align.tasks import TASKS

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
