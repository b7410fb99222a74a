"""``ctlab eval``: evaluations of trained models.

Only argument parsing lives here; each handler imports its evaluation when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ctlab.args import positive_int
from ctlab.errors import UserError


def _early_exit(args: argparse.Namespace) -> int:
    from ctlab.eval.early_exit import early_exit_report, table

    print(table(early_exit_report(args.runs, args.data, args.out, args.batches)))
    print(f"report: {os.path.join(args.out, 'early_exit.json')}, chart: {os.path.join(args.out, 'early_exit.png')}")
    return 0


def _sde(args: argparse.Namespace) -> int:
    from ctlab.align.data_cli import design_from, read_design_folder
    from ctlab.align.sde import DESIGN_FIELDS
    from ctlab.align.tasks import task
    from ctlab.eval.sde import TABLE_HEADER, evaluate_design, table_row
    from ctlab.infer.options import build_engine
    from ctlab.report.tables import text_table
    from ctlab.runs import output_file, write_json

    if (args.data is None) == (args.task is None):
        raise UserError("give either --data (a folder of `ctlab data sde`) or --task")
    if args.data and any(getattr(args, name) is not None for name in DESIGN_FIELDS):
        raise UserError("--data brings its own design: drop the design flags, or use --task with them")
    if args.out:
        output_file(args.out)
    chosen, design = read_design_folder(args.data) if args.data else (task(args.task), design_from(args))
    design.check(chosen)
    engine, text = build_engine(args, max_batch=args.batch)
    result = evaluate_design(engine, text, chosen, design, args.limit, args.max_new_tokens, not args.no_progress)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, ensure_ascii=False) if args.json else text_table([TABLE_HEADER, table_row(result)]))
    if result["too_long"]:
        print(
            f"{result['too_long']} prompts left no room for a reply in the context (scored as wrong)", file=sys.stderr
        )
    return 0


def _constraints(args: argparse.Namespace) -> int:
    from ctlab.align.instructions import read_constraint_prompts
    from ctlab.eval.constraints import evaluate_constraints, tables
    from ctlab.infer.options import build_engine
    from ctlab.runs import output_file, write_json

    if args.out:
        output_file(args.out)
    records = read_constraint_prompts(args.data)
    print(records.summary("constrained prompts"), file=sys.stderr)
    engine, text = build_engine(args, max_batch=args.batch)
    items = records.items[: args.limit]
    result = evaluate_constraints(engine, text, items, args.max_new_tokens, not args.no_progress)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, ensure_ascii=False) if args.json else tables(result))
    if result["too_long"]:
        print(
            f"{result['too_long']} prompts left no room for a reply in the context (scored as failing)",
            file=sys.stderr,
        )
    return 0


def _generation_flags(parser: argparse.ArgumentParser, limit: int, max_new_tokens: int) -> None:
    parser.add_argument("--limit", type=positive_int, default=limit, help=f"records asked ({limit})")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=max_new_tokens, help=f"longest reply ({max_new_tokens})"
    )
    parser.add_argument("--batch", type=positive_int, default=16, help="requests decoded together (16)")
    parser.add_argument("--out", metavar="FILE", help="write the result as JSON")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(commands: argparse._SubParsersAction) -> None:
    early_exit = commands.add_parser(
        "early-exit",
        help="perplexity when exiting after each layer (LayerSkip)",
        description="Per-layer perplexity of each RUN's latest checkpoint (or a checkpoint folder) on a packed "
        "folder, through the shared final norm and head. Prints a table; writes early_exit.json and .png.",
    )
    early_exit.add_argument("runs", nargs="+", metavar="RUN", help="run folders or checkpoint folders")
    early_exit.add_argument("--data", required=True, metavar="PACKED", help="held-out packed folder")
    early_exit.add_argument("--batches", type=positive_int, default=8, help="batches of 8 sequences (default: 8)")
    early_exit.add_argument("--out", default="runs/early-exit", metavar="DIR", help="report folder")
    early_exit.set_defaults(handler=_early_exit)

    from ctlab.align.data_cli import add_design_arguments
    from ctlab.align.tasks import TASKS
    from ctlab.infer.options import add_engine_arguments

    sde = commands.add_parser(
        "sde",
        help="accuracy and parse rate of a model on a built-in task in one sample design",
        description="Ask MODEL the held-out split of a built-in task in a sample design (read from a folder of "
        "`ctlab data sde`, or given with --task and the design flags), read each greedy reply back with the "
        "design's parser and print accuracy, per-aspect accuracy and parse rate.",
    )
    add_engine_arguments(sde)
    sde.add_argument("--data", metavar="DIR", help="a folder written by `ctlab data sde` (task and design)")
    sde.add_argument("--task", choices=TASKS, help="a built-in task (with the design flags)")
    _generation_flags(sde, 200, 96)
    add_design_arguments(sde)
    sde.set_defaults(handler=_sde)

    constraints = commands.add_parser(
        "constraints",
        help="IFEval-style accuracy on multi-constraint prompts (strict and loose, per kind)",
        description="Answer each prompt of a file of `ctlab data constraints` greedily and check it with its "
        "constraints' verifiers: prompt- and instruction-level accuracy, strict and loose, and per kind.",
    )
    add_engine_arguments(constraints)
    constraints.add_argument("--data", required=True, metavar="JSONL", help="constrained prompts")
    _generation_flags(constraints, 300, 160)
    constraints.set_defaults(handler=_constraints)
