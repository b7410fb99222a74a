"""Scoring text with a model: token log-probabilities and perplexity, batched, on any device.

One primitive for every evaluation that asks how likely a text is to a model: pretraining's
held-out perplexity, the per-layer early-exit table, and the long-context and probing
evaluations that follow. Batches come from a packed folder (its first sequences, in order) or
from a list of texts (each text a row ``[BOS] text [EOS]`` as ``ctlab data tokenize`` stores
documents, padded to the longest row). A batch is a dict of ``input_ids``, ``labels`` and
``position_ids``, each (B, T) int64, with ``labels`` the next token or IGNORE_INDEX.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctlab.errors import UserError
from ctlab.tokens.loader import collate
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset


def packed_batches(data: str | Path | PackedDataset, batch_size: int, batches: int) -> Iterator[dict]:
    """The first ``batches`` batches of ``batch_size`` sequences of a packed folder, in order."""
    if batch_size < 1 or batches < 1:
        raise UserError(f"batch size and number of batches must be at least 1, not {batch_size} and {batches}")
    dataset = data if isinstance(data, PackedDataset) else PackedDataset(data)
    end = min(len(dataset), batches * batch_size)
    return (collate([dataset[i] for i in range(s, min(s + batch_size, end))]) for s in range(0, end, batch_size))


def text_batches(tokenizer_dir: str | Path, texts: list[str], batch_size: int = 8) -> Iterator[dict]:
    """``texts`` as batches of ``batch_size`` rows ``[BOS] text [EOS]`` (text tokenised as
    ordinary text, special-token look-alikes included), padded with the pad id."""
    from ctlab.tokenizer.load import read_tokenizer
    from ctlab.tokens.tokenize import TokenizerInfo

    info = TokenizerInfo.load(str(tokenizer_dir))
    tokenizer = read_tokenizer(info.path)
    prefix = [] if info.bos_id is None else [info.bos_id]
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer.encode_batch_fast(texts[start : start + batch_size], add_special_tokens=False)
        rows = [np.array([*prefix, *e.ids, info.eos_id], dtype=np.int64) for e in encoded]
        width = max(len(r) for r in rows)
        samples = []
        for row in rows:
            input_ids = np.full(width, info.pad_id, dtype=np.int64)
            labels = np.full(width, IGNORE_INDEX, dtype=np.int64)
            input_ids[: len(row)] = row
            labels[: len(row) - 1] = row[1:]
            samples.append({"input_ids": input_ids, "labels": labels, "position_ids": np.arange(width)})
        yield collate(samples)


def _on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """(B, T) fp32: log p(labels[b, t] | the row up to t), 0 where the label is IGNORE_INDEX."""
    batch = _on(batch, next(model.parameters()).device)
    logits = model(batch["input_ids"], batch["position_ids"]).logits.float()
    labels = batch["labels"]
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return torch.where(labels == IGNORE_INDEX, torch.zeros_like(picked), picked)


def _summary(total: float, tokens: int) -> dict:
    loss = total / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "tokens": tokens}


@torch.no_grad()
def _negative_log_likelihoods(model, batches: Iterable[dict], exits: bool) -> tuple[list[float], int]:
    """Summed cross-entropy of the labels after each layer (``exits``; through the shared final
    norm and head) or after the last, and the number of labels scored."""
    device = next(model.parameters()).device
    totals: list[float] = []
    tokens = 0
    for batch in batches:
        batch = _on(batch, device)
        out = model(batch["input_ids"], batch["position_ids"], output_hidden_states=exits)
        logits = [model.exit_logits(h) for h in out.hidden_states[1:]] if exits else [out.logits]
        labels = batch["labels"].flatten()
        sums = [
            F.cross_entropy(x.flatten(0, 1).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") for x in logits
        ]
        totals = [a + b.item() for a, b in zip(totals or [0.0] * len(sums), sums, strict=True)]
        tokens += int((labels != IGNORE_INDEX).sum())
    return totals or [0.0], tokens


def perplexity(model: torch.nn.Module, batches: Iterable[dict]) -> dict:
    """Mean cross-entropy (``loss``, nats per token), ``ppl`` and the ``tokens`` scored."""
    totals, tokens = _negative_log_likelihoods(model, batches, exits=False)
    return _summary(totals[0], tokens)


def layer_perplexity(model: torch.nn.Module, batches: Iterable[dict]) -> list[dict]:
    """:func:`perplexity` when exiting after each layer 1..L (``layer`` added to each row)."""
    totals, tokens = _negative_log_likelihoods(model, batches, exits=True)
    return [{"layer": layer, **_summary(total, tokens)} for layer, total in enumerate(totals, 1)]
