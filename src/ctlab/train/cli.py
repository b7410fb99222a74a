"""``ctlab train``: training commands, each an objective of the shared loop.

Only argument parsing lives here; each handler imports its objective when it runs.
"""

from __future__ import annotations

import argparse
import os

from ctlab.errors import UserError

# flag → config field; the flags win over --config, and --set wins over both
PRETRAIN_FLAGS = ("data", "out", "preset", "steps", "batch_size", "grad_accum", "lr", "dtype", "device", "parallel")


def _pretrain(args: argparse.Namespace) -> int:
    from ctlab.train.config import PretrainConfig
    from ctlab.train.loop import summary
    from ctlab.train.pretrain import pretrain

    flags = {name: getattr(args, name) for name in (*PRETRAIN_FLAGS, "seed", "init_from")}
    flags = {name: value for name, value in flags.items() if value is not None}
    if args.compile:
        flags["compile"] = True
    for item in args.eval or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"bad --eval {item!r}: expected NAME=PACKED_FOLDER")
        flags[f"eval_data.{name}"] = path
    config = PretrainConfig.load(args.config, flags, args.set or [])
    final = pretrain(config, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the first process reports
        print(summary(config.out, final))
        print(f"run: {config.out} (checkpoints/, metrics.jsonl, loss.png)")
    return 0


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
    pretrain.add_argument("--config", metavar="FILE", help="training config (YAML)")
    pretrain.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} (default: tiny)")
    pretrain.add_argument("--data", metavar="PACKED", help="packed folder (`ctlab data pack`)")
    pretrain.add_argument("--out", metavar="RUN", help="run folder")
    pretrain.add_argument("--steps", type=int, help="optimiser steps")
    pretrain.add_argument("--batch-size", type=int, help="sequences per micro-batch per process")
    pretrain.add_argument("--grad-accum", type=int, help="micro-batches per step")
    pretrain.add_argument("--lr", type=float, help="peak learning rate")
    pretrain.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32 or bf16 autocast")
    pretrain.add_argument("--device", choices=("auto", "cuda", "cpu"), help="auto (default): a GPU when there is one")
    pretrain.add_argument(
        "--parallel", choices=("ddp", "fsdp"), help="under torchrun: ddp (default) or fsdp (sharded parameters)"
    )
    pretrain.add_argument("--compile", action="store_true", help="torch.compile the model")
    pretrain.add_argument("--seed", type=int, help="seed of initialisation, shuffling and layer dropout")
    pretrain.add_argument(
        "--init-from", metavar="CHECKPOINT", help="continual pretraining: start from this checkpoint or run"
    )
    pretrain.add_argument("--eval", action="append", metavar="NAME=PACKED", help="held-out set (repeatable)")
    pretrain.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field (repeatable)")
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar")
    pretrain.set_defaults(handler=_pretrain)
