"""The ``ctlab`` command: the entry point, and nothing else.

Each stage registers its own subcommands (``register(...)`` in the modules named in
:data:`GROUPS` and :data:`COMMANDS`), imported only when that command is asked for, so
``ctlab --help`` stays fast.
A :class:`ctlab.errors.UserError` is printed as one line ``ctlab: error: ...`` with exit
status 2; any other exception is a bug and shows its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctlab import __version__
from ctlab.errors import UserError

GROUPS = {  # command → (help, the modules that register its subcommands with register(commands))
    "data": (
        "stages 1, 3 and 5: web data → clean corpus → token shards → packed sequences; fine-tuning data",
        ("ctlab.data.cli", "ctlab.tokens.cli", "ctlab.align.data_cli"),
    ),
    "tokenizer": ("stage 2: train and compare tokenizers", ("ctlab.tokenizer.cli",)),
    "train": (
        "stages 4 and 5: pretrain, fine-tune and preference-train models",
        ("ctlab.train.cli", "ctlab.align.cli"),
    ),
    "eval": ("stage 7: evaluate models", ("ctlab.eval.cli",)),
}
COMMANDS = {  # command → (help, "module" with register(parser), or "module:function")
    "generate": ("stage 6: generate text from a prompt or chat messages", "ctlab.infer.cli:register_generate"),
    "chat": ("stage 6: chat with a model in the terminal", "ctlab.infer.cli:register_chat"),
    "serve": ("stage 6: serve a model over an OpenAI-compatible HTTP API", "ctlab.infer.cli:register_serve"),
    "demo": ("run the main job on built-in data", "ctlab.demo"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the subcommands of the stage that ``argv`` names (the others unloaded)."""
    parser = argparse.ArgumentParser(prog="ctlab", description="Make and study small Chinese-centric language models.")
    parser.add_argument("--version", action="version", version=f"ctlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (text, modules) in GROUPS.items():
        group = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        subcommands = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        for module in modules if name == chosen else ():
            importlib.import_module(module).register(subcommands)
    for name, (text, target) in COMMANDS.items():
        command = commands.add_parser(name, help=text)
        if name == chosen:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(module), function or "register")(command)
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
