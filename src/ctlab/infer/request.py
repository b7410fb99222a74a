"""A request to the engine: its prompt and parameters, what it produced, what it cost.

The engine fills it in as it runs; whoever submitted it follows its tokens through
:meth:`Request.tokens` (another thread), a listener (the server's event loop), or
:meth:`~ctlab.infer.engine.Engine.follow`, and reads :meth:`Request.summary` at the end.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ctlab.infer.sampling import SamplingParams


@dataclass(eq=False)  # a request is itself: compared by identity
class Request:
    """One generation: its prompt, its parameters, and what it has produced so far.

    finish_reason: None while running; "stop" (an end or stop token: not kept in ``output``),
    "length" (max_new_tokens or the model's context), "cancelled".
    """

    id: int
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    row: int | None = None
    generator: torch.Generator | None = None
    stops: set[int] = field(default_factory=set)  # the token ids that end it (set by the engine)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    kv_bytes: int = 0  # the KV bytes the request's row held (after its prefill, then when it finished)
    full_kv_bytes: int = 0  # what a full cache would hold for the same tokens
    steps: int = 0  # decode (or verification) forwards of the target it took part in
    drafted: int = 0  # speculated tokens the target checked
    accepted: int = 0  # of which it kept
    top_logprobs: int | None = None  # record each new token's log-probability and this many alternatives
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    listener: Callable[[int | None], None] | None = field(default=None, repr=False)  # called from step()
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per target forward (the prefill, which makes the first, counts as one)."""
        return len(self.output) / (1 + self.steps)

    def summary(self) -> dict:
        """What the request cost: tokens, time, decode speed (tokens after the first, per
        second), the KV bytes kept against a full cache, and speculation's counters."""
        end = self.finished_at or time.perf_counter()
        first = self.first_token_at or end
        decode = end - first
        return {
            "prompt_tokens": len(self.prompt),
            "new_tokens": len(self.output),
            "finish_reason": self.finish_reason,
            "seconds": round(end - self.submitted, 4),
            "time_to_first_token": round(first - self.submitted, 4),
            "tokens_per_second": round((len(self.output) - 1) / decode, 2) if decode > 0 and self.output else None,
            "kv_bytes": self.kv_bytes,
            "full_kv_bytes": self.full_kv_bytes,
            "acceptance_rate": None if self.acceptance_rate is None else round(self.acceptance_rate, 4),
            "tokens_per_forward": round(self.tokens_per_forward, 3),
        }

    def publish(self, token: int | None) -> None:
        """Hand a new token (None: the end) to whoever follows the request: its listener, or
        else its queue of events."""
        if self.listener is not None:
            self.listener(token)
        else:
            self.events.put(token)

    def tokens(self, timeout: float | None = None) -> Iterator[int]:
        """The request's new tokens as the engine produces them (for a thread other than the
        one stepping the engine); ends when the request finishes."""
        while True:
            token = self.events.get(timeout=timeout)
            if token is None:
                return
            yield token


@dataclass
class Stats:
    """Counters of an engine since it was made."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    forwards: int = 0  # model forwards (prefill chunks and decode steps)
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0
