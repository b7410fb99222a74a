"""``ctlab train sft``: supervised fine-tuning on conversations, an objective of the shared loop.

Conversations go through the model's chat template (:mod:`ctlab.align.encode`), are packed
best-fit into rows with per-conversation attention and positions
(:mod:`ctlab.align.packing`) and served by stage 3's loader, so shuffling, sharding and
resume are the pretraining ones. The loss is the cross-entropy of the assistant's tokens (or
of every token with ``train_on: all``); logged with it: token accuracy; the held-out set gets
both. Checkpoints carry the tokenizer, so the result loads in ``ctlab generate`` and in
transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctlab.align.config import SFTConfig
from ctlab.align.packing import PackedExamples
from ctlab.align.records import conversation, read_records
from ctlab.align.start import StartingPoint, data_identity, moe_regulariser, note, resolved
from ctlab.errors import UserError
from ctlab.tokens.loader import PackedLoader, collate
from ctlab.tokens.packed import IGNORE_INDEX
from ctlab.train.distributed import Distributed, distributed
from ctlab.train.loop import Batches, Loss, Objective, fit


def conversations(path: str, start: StartingPoint, train_on: str, seq_len: int, announce: bool) -> PackedExamples:
    """The conversations of ``path`` encoded and packed, what was left out told to the user."""
    records = read_records(path, conversation, "conversations")
    examples = records.convert(lambda record: [start.encoder.conversation(record, train_on)])
    packed = PackedExamples(examples, seq_len, start.pad_id, path)
    if not len(packed):
        raise UserError(f"{path}: no conversation fits in seq_len {seq_len:,}")
    if announce:
        note(records.summary("conversations"))
        if packed.too_long:
            note(f"{path}: left out {packed.too_long:,} conversations longer than seq_len {seq_len:,}")
    return packed


class RowBatches(Batches):
    """A loader's batches, resumable through its stream position."""

    def __init__(self, loader: PackedLoader):
        self.loader = loader

    def next(self) -> dict[str, torch.Tensor]:
        return next(self.loader)

    def state(self) -> dict:
        return self.loader.state_dict()

    def restore(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def token_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (fp32) and number of correct argmax predictions of logits (B, T, V)
    against labels (B, T), over the labels that are not IGNORE_INDEX."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
    return loss, correct


class FineTuning(Objective):
    kind = "sft"
    title = "Fine-tuning loss (the assistant's tokens)"

    def __init__(self, config: SFTConfig, env: Distributed):
        self.config = config
        start = self.start = StartingPoint(config.model)
        self.model = start.model()
        self.seq_len = start.row_length(config.seq_len, self.model)
        self.train_rows = conversations(config.data, start, config.train_on, self.seq_len, env.main)
        self.eval_rows = None
        if config.eval_data is not None:
            self.eval_rows = conversations(config.eval_data, start, config.train_on, self.seq_len, env.main)
        self.batches = RowBatches(
            PackedLoader(self.train_rows, config.batch_size, config.seed, env.rank, env.world_size)
        )
        self.tokenizer_dir = start.tokenizer_dir

    def identity(self) -> dict:
        return data_identity(self.config, self.start)

    def record(self) -> dict:
        return {"config": resolved(self.config), "rows": len(self.train_rows), "tokens": self.train_rows.tokens}

    def count(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss(self, model: torch.nn.Module, batch: dict, step: int, rng: torch.Generator) -> Loss:
        out = model(batch["input_ids"], batch["position_ids"])
        total, correct = token_scores(out.logits, batch["labels"])
        logged = {"loss": total.detach(), "accuracy": correct.to(total.dtype)}
        return Loss(total, logged, moe_regulariser(self.model.config, out))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, dict] | None:
        if self.eval_rows is None:
            return None
        device = next(model.parameters()).device
        total, correct, tokens = 0.0, 0, 0
        size = self.config.batch_size
        for first in range(0, min(len(self.eval_rows), size * self.config.eval_batches), size):
            batch = collate([self.eval_rows[i] for i in range(first, min(first + size, len(self.eval_rows)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.dtype == "bf16"):
                logits = model(batch["input_ids"], batch["position_ids"]).logits
            loss, right = token_scores(logits, batch["labels"])
            total, correct = total + loss.item(), correct + int(right)
            tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        loss = total / max(tokens, 1)
        summary = {"loss": loss, "ppl": math.exp(min(loss, 50)), "accuracy": correct / max(tokens, 1), "tokens": tokens}
        return {"heldout": summary}


def train_sft(config: SFTConfig, progress: bool = True) -> dict:
    """Train (or resume) the fine-tuning run ``config`` describes; returns the final metrics."""
    config.require_paths()
    with distributed(config.device) as env:
        return fit(FineTuning(config, env), config, env, progress)
