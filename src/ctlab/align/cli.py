"""``ctlab train sft`` and ``ctlab train dpo``: argument parsing only (the loop's flags are shared)."""

from __future__ import annotations

import argparse

from ctlab.errors import UserError
from ctlab.train.cli import add_loop_flags, run

ALIGN_FLAGS = ("model", "data", "eval_data", "seq_len")


def _sft(args: argparse.Namespace) -> int:
    from ctlab.align.config import SFTConfig
    from ctlab.align.sft import train_sft

    return run(args, SFTConfig, train_sft, {}, (*ALIGN_FLAGS, "train_on"))


def parse_losses(items: list[str] | None) -> dict[str, float]:
    """``--loss dpo --loss sft:0.5`` → {"dpo": 1.0, "sft": 0.5}."""
    losses: dict[str, float] = {}
    for item in items or []:
        name, _, weight = item.partition(":")
        try:
            losses[name] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad --loss {item!r}: expected NAME or NAME:WEIGHT") from None
    return losses


def _dpo(args: argparse.Namespace) -> int:
    from ctlab.align.config import PreferenceConfig
    from ctlab.align.preference import train_preference

    losses = parse_losses(args.loss)
    flags = {"losses": losses} if losses else {}
    return run(
        args,
        PreferenceConfig,
        train_preference,
        flags,
        (*ALIGN_FLAGS, "beta", "alpha", "label_smoothing", "gamma", "reference"),
    )


def _align_flags(parser: argparse.ArgumentParser, records: str) -> None:
    parser.add_argument("--model", metavar="MODEL", help="the model to start from: a run, checkpoint or HF folder")
    parser.add_argument("--data", metavar="JSONL", help=f"{records} (JSONL)")
    parser.add_argument("--eval-data", metavar="JSONL", help=f"held-out {records} (JSONL)")
    parser.add_argument("--seq-len", type=int, help="tokens per packed row (default 512); longer examples are counted")


def register(commands: argparse._SubParsersAction) -> None:
    from ctlab.align.losses import LOSSES

    sft = commands.add_parser(
        "sft",
        help="fine-tune a model on conversations (chat template, loss on the assistant's turns, packed)",
        description='Supervised fine-tuning on JSONL conversations ({"messages": [{role, content}, ...]}). '
        "Conversations go through the model's chat template and are packed best-fit with per-conversation "
        "attention. Rerunning the same command resumes; the checkpoints load in `ctlab generate` and transformers.",
    )
    _align_flags(sft, "conversations")
    sft.add_argument("--train-on", choices=("assistant", "all"), help="loss on the assistant's turns (default) or all")
    add_loop_flags(sft, "packed rows")
    sft.set_defaults(handler=_sft)

    dpo = commands.add_parser(
        "dpo",
        help="preference-train a model on chosen/rejected pairs (DPO, IPO, TDPO1/2, SimPO, + SFT)",
        description='Preference training on JSONL pairs ({"prompt", "chosen", "rejected"}, strings or '
        "message lists). The reference is the starting model: its log-probs are computed once unless a loss "
        "needs its distributions (TDPO), which keeps it in memory.",
    )
    _align_flags(dpo, "preference pairs")
    dpo.add_argument(
        "--loss",
        action="append",
        metavar="NAME[:WEIGHT]",
        help=f"a loss to add (repeatable; default dpo): {', '.join(LOSSES)}",
    )
    dpo.add_argument("--beta", type=float, help="β of every loss (default 0.1)")
    dpo.add_argument("--alpha", type=float, help="TDPO2's α (default 0.5)")
    dpo.add_argument("--label-smoothing", type=float, help="DPO's label smoothing ε (default 0)")
    dpo.add_argument("--gamma", type=float, help="SimPO's target margin γ (default 0.5)")
    dpo.add_argument("--reference", choices=("auto", "model"), help="auto (default): precompute when possible")
    add_loop_flags(dpo, "preference pairs")
    dpo.set_defaults(handler=_dpo)
