"""Configs of the alignment objectives: ``ctlab train sft`` and ``ctlab train dpo``.

Both start from a model (a run folder, a checkpoint or an HF checkpoint with its tokenizer)
and read JSONL records (:mod:`ctlab.align.records`); they are :class:`LoopConfig`\\ s, so
schedule, accumulation, checkpoints, resume and parallelism are the shared loop's.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from ctlab.align.losses import LOSSES
from ctlab.config import config
from ctlab.train.config import LoopConfig


@config
class AlignConfig(LoopConfig):
    """What both objectives share: the starting model, the data and the row length."""

    model: str = ""  # the model to train: a run folder, a checkpoint or an HF checkpoint
    data: str = ""  # JSONL records
    eval_data: str | None = None  # held-out JSONL records of the same shape
    seq_len: PositiveInt | None = None  # tokens per packed row (default 512, or the model's context if
    # shorter); longer examples are left out and counted
    batch_size: PositiveInt = 8  # per micro-batch per process: rows (sft) or pairs (dpo)
    eval_batches: PositiveInt = 8
    lr: PositiveFloat = 1e-4
    warmup_steps: NonNegativeInt = 10

    def require_paths(self) -> None:
        self.require(("model", "the model to start from"), ("data", "a JSONL file"), ("out", "a run folder"))


@config
class SFTConfig(AlignConfig):
    """``ctlab train sft``: conversations, loss on the assistant's turns (or on every token)."""

    train_on: Literal["assistant", "all"] = "assistant"


@config
class PreferenceConfig(AlignConfig):
    """``ctlab train dpo``: preference pairs under a weighted sum of losses.

    losses: name → weight, e.g. {dpo: 1.0} or {dpo: 1.0, sft: 0.5} (names: :data:`LOSSES`);
    beta for every loss (SimPO's paper uses β 2–2.5 with γ/β ≈ 0.5, far from DPO's 0.1: give it
    its own run); alpha: TDPO2's α; label_smoothing: DPO's ε; gamma: SimPO's margin;
    reference: "auto" precomputes the reference's log-probs once and frees it unless a loss
    needs its full distributions (TDPO), "model" keeps the reference model in memory.
    """

    losses: dict[str, NonNegativeFloat] = field(default_factory=lambda: {"dpo": 1.0})
    beta: PositiveFloat = 0.1
    alpha: NonNegativeFloat = 0.5
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    gamma: NonNegativeFloat = 0.5
    reference: Literal["auto", "model"] = "auto"
    lr: PositiveFloat = 5e-6

    @field_validator("losses")
    @classmethod
    def _known(cls, losses: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(losses) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r} (known: {', '.join(LOSSES)})")
        if not any(losses.values()):
            raise ValueError("at least one loss needs a weight above 0")
        return losses
