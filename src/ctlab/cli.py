"""The ``ctlab`` command: the entry point, and nothing else.

Each stage registers its own subcommands (``register(parser)`` in the module named in
:data:`STAGES`), imported only when that stage is asked for, so ``ctlab --help`` stays fast.
A :class:`ctlab.errors.UserError` is printed as one line ``ctlab: error: ...`` with exit
status 2; any other exception is a bug and shows its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctlab import __version__
from ctlab.errors import UserError

STAGES = {  # command → (module with register(parser), help)
    "demo": ("ctlab.demo", "run the main job on built-in data"),
    "data": ("ctlab.data.cli", "stages 1 and 3: web data → clean corpus → token shards → packed sequences"),
    "tokenizer": ("ctlab.tokenizer.cli", "stage 2: train and compare tokenizers"),
    "train": ("ctlab.train.cli", "stage 4: pretrain models"),
    "eval": ("ctlab.eval.cli", "stage 7: evaluate models"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the subcommands of the stage that ``argv`` names (the others unloaded)."""
    parser = argparse.ArgumentParser(prog="ctlab", description="Make and study small Chinese-centric language models.")
    parser.add_argument("--version", action="version", version=f"ctlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module, text) in STAGES.items():
        stage = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == chosen:
            importlib.import_module(module).register(stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.handler(args)
    except UserError as err:
        print(f"ctlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
