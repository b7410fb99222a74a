"""How the next token is chosen: greedy, or sampled from a shaped distribution.

One function, :func:`next_token_distribution`, turns a row's logits into the probabilities a
token is drawn from (repetition penalty, temperature, top-k, top-p, min-p); plain decoding
samples from it and speculative decoding's acceptance rule compares the target's and the
draft's, so both see exactly the same distribution. Temperature 0 is greedy: the argmax of
the (penalised) logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ctlab.config import config, parse


@config
class SamplingParams:
    max_new_tokens: PositiveInt = 128
    temperature: NonNegativeFloat = 0.0  # 0: greedy
    top_k: NonNegativeInt = 0  # 0: all tokens
    top_p: float = Field(default=1.0, gt=0, le=1)
    min_p: float = Field(default=0.0, ge=0, lt=1)  # drop tokens below min_p × the top probability
    repetition_penalty: PositiveFloat = 1.0  # > 1 discourages tokens already in the context (CTRL)
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None  # None: a fresh draw each request
    stop_token_ids: list[NonNegativeInt] = Field(default_factory=list)  # besides the model's end token
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def of(cls, **settings) -> SamplingParams:
        """Parameters from a user's settings (None means the default), checked strictly: a
        :class:`~ctlab.config.ConfigError` names a bad one."""
        return parse(cls, {k: v for k, v in settings.items() if v is not None}, "sampling")


def penalised(logits: torch.Tensor, context: Sequence[int] | torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (V,) with the tokens of ``context`` (N token ids) made less likely: positive
    logits divided by ``penalty``, negative ones multiplied. Without a penalty the context is
    not read (a decode step builds no tensor of it)."""
    if penalty == 1.0 or len(context) == 0:
        return logits
    context = torch.as_tensor(context, dtype=torch.long, device=logits.device)
    seen = logits[context]
    return logits.scatter(0, context, torch.where(seen > 0, seen / penalty, seen * penalty))


def next_token_distribution(
    logits: torch.Tensor, params: SamplingParams, context: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """The probabilities (V,) fp32 the next token is drawn from, given its logits (V,) and the
    ``context`` token ids so far; greedy decoding: all mass on the argmax."""
    logits = penalised(logits.float(), context, params.repetition_penalty)
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        threshold = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, before >= params.top_p)
        probs = probs.masked_fill(drop, 0.0)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return probs / probs.sum()


def choose(
    logits: torch.Tensor, params: SamplingParams, context: Sequence[int] | torch.Tensor, generator: torch.Generator
) -> int:
    """The next token for logits (V,): the argmax when greedy, else a draw from
    :func:`next_token_distribution` with ``generator``."""
    if params.greedy:
        return int(penalised(logits.float(), context, params.repetition_penalty).argmax())
    probs = next_token_distribution(logits, params, context)
    return int(torch.multinomial(probs, 1, generator=generator))
