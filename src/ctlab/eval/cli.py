"""``ctlab eval``: evaluations of trained models.

Only argument parsing lives here; each handler imports its evaluation when it runs.
"""

from __future__ import annotations

import argparse
import os

from ctlab.args import positive_int


def _early_exit(args: argparse.Namespace) -> int:
    from ctlab.eval.early_exit import early_exit_report, table

    print(table(early_exit_report(args.runs, args.data, args.out, args.batches)))
    print(f"report: {os.path.join(args.out, 'early_exit.json')}, chart: {os.path.join(args.out, 'early_exit.png')}")
    return 0


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
