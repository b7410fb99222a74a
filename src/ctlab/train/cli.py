"""``ctlab train``: training commands, each an objective of the shared loop.

Only argument parsing lives here (the loop's flags shared by every objective); each handler
imports its objective when it runs. The alignment objectives register theirs from
:mod:`ctlab.align.cli` with :func:`add_loop_flags` and :func:`run`.
"""

from __future__ import annotations

import argparse
import os

from ctlab.errors import UserError

# flag → config field; the flags win over --config, and --set wins over both
LOOP_FLAGS = ("out", "steps", "batch_size", "grad_accum", "lr", "dtype", "device", "parallel", "seed")


def add_loop_flags(parser: argparse.ArgumentParser, batch: str) -> None:
    """The flags of every training command; ``batch``: what a micro-batch counts."""
    parser.add_argument("--config", metavar="FILE", help="training config (YAML)")
    parser.add_argument("--out", metavar="RUN", help="run folder")
    parser.add_argument("--steps", type=int, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, help=f"{batch} per micro-batch per process")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32 or bf16 autocast")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="auto (default): a GPU when there is one")
    parser.add_argument(
        "--parallel", choices=("ddp", "fsdp"), help="under torchrun: ddp (default) or fsdp (sharded parameters)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, help="seed of initialisation, shuffling and random draws")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, config_class, train, flags: dict, names: tuple[str, ...] = ()) -> int:
    """Build ``config_class`` from --config, the loop's flags, ``names`` of the objective's own
    flags and ``flags`` (already parsed), then --set; train it and print the closing lines."""
    from ctlab.train.loop import summary

    given = {name: getattr(args, name) for name in (*LOOP_FLAGS, *names)}
    given = {name: value for name, value in given.items() if value is not None} | flags
    if args.compile:
        given["compile"] = True
    config = config_class.load(args.config, given, args.set or [])
    final = train(config, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the first process reports
        print(summary(config.out, final))
        print(f"run: {config.out} (checkpoints/, metrics.jsonl, loss.png)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from ctlab.train.config import PretrainConfig
    from ctlab.train.pretrain import pretrain

    flags = {}
    for item in args.eval or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"bad --eval {item!r}: expected NAME=PACKED_FOLDER")
        flags[f"eval_data.{name}"] = path
    return run(args, PretrainConfig, pretrain, flags, ("data", "preset", "init_from"))


def register(commands: argparse._SubParsersAction) -> None:
    from ctlab.model.config import PRESETS

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain a model on packed data (resumes a killed run; runs under torchrun for data parallelism)",
        description="Pretrain a model from a packed folder. Settings come from --config (YAML of the training "
        "config), then the flags, then --set KEY=VALUE (e.g. model.num_layers=2, layerskip.p_max=0.2). Rerunning "
        "the same command resumes from the last complete checkpoint. Under `torchrun --nproc-per-node N` it "
        "trains data-parallel (DDP, or FSDP with --parallel fsdp).",
    )
    pretrain.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} (default: tiny)")
    pretrain.add_argument("--data", metavar="PACKED", help="packed folder (`ctlab data pack`)")
    pretrain.add_argument(
        "--init-from", metavar="CHECKPOINT", help="continual pretraining: start from this checkpoint or run"
    )
    pretrain.add_argument("--eval", action="append", metavar="NAME=PACKED", help="held-out set (repeatable)")
    add_loop_flags(pretrain, "sequences")
    pretrain.set_defaults(handler=_pretrain)
