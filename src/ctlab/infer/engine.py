"""The inference engine: token ids in, token ids out, many requests sharing one model.

Requests wait in a queue; between decode steps the engine admits them into free rows of one
preallocated :class:`~ctlab.model.cache.KVCache` (their prompts prefilled in chunks, the
logits made only at the last position), then decodes one token for every running row in a
single batched forward, and lets finished rows go (the last running row moves into the
freed one, so running rows stay [0, n) and a decode step reads contiguous rows). That is
continuous batching: a server's clients share the model, and a request that arrives while
others decode starts at the next step.

A KV policy (:mod:`ctlab.infer.policies`) may watch each layer's queries and evict entries
after a prefill and after each step. A speculator (:mod:`ctlab.infer.speculative`,
:mod:`ctlab.infer.triforce`) replaces the decode step by a round of drafts that one
acceptance routine checks. ``add`` and ``cancel`` may be called from any thread; ``step``
from one.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch

from ctlab.errors import UserError
from ctlab.infer.layout import decode_layout
from ctlab.infer.policies import FullCache, KVPolicy
from ctlab.infer.request import Request, Stats
from ctlab.infer.sampling import SamplingParams, choose
from ctlab.infer.speculative import Speculator, accept
from ctlab.model.cache import KVCache, Observer
from ctlab.model.decoder import Decoder


class Engine:
    def __init__(
        self,
        model: Decoder,
        *,
        max_batch: int = 1,
        context: int | None = None,
        kv_policy: KVPolicy | None = None,
        speculator: Speculator | None = None,
        prefill_chunk: int = 512,
        eos_token_id: int | None = None,
        max_waiting: int | None = None,
        compile: bool = False,
    ):
        """``context``: the longest request (prompt + output) a row holds, at most the model's
        (default); ``max_waiting``: requests that may queue beyond the running ones before
        :meth:`add` refuses (None: no bound). The model is laid out for decoding in place
        (:mod:`ctlab.infer.layout`: the same function and state dict), with compiled decoding
        when ``compile`` (on CPU: batch-1 steps as compiled programs, each built at its first use)."""
        self.compile = compile
        self.model = decode_layout(model.eval(), compile)
        config = model.config
        self.context = config.max_position_embeddings if context is None else context
        if not 1 <= self.context <= config.max_position_embeddings:
            raise UserError(
                f"a context of {self.context:,} is beyond the model's {config.max_position_embeddings:,} positions"
            )
        self.policy = kv_policy or FullCache()
        self.policy.check(self.context)
        self.speculator = speculator
        self.prefill_chunk = prefill_chunk
        self.eos_token_id = config.eos_token_id if eos_token_id is None else eos_token_id
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.device = model.norm.weight.device
        self.cache = KVCache.for_model(model, max_batch, self.context + prefill_chunk)
        self.policy.prepare(self.cache)
        if speculator is not None:
            speculator.prepare(self)
        self.running: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()  # guarded by _lock
        self.cancelled: queue.SimpleQueue[tuple[Request, str]] = queue.SimpleQueue()
        self.stats = Stats()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ requests

    def add(
        self,
        prompt: list[int],
        params: SamplingParams | None = None,
        top_logprobs: int | None = None,
        listener: Callable[[int | None], None] | None = None,
    ) -> Request:
        """Queue a request (a :class:`UserError` for an empty prompt, one the context cannot
        hold, a token outside the vocabulary, or a full queue). ``top_logprobs``: record each
        new token's log-probability and that many alternatives; ``listener``: called from
        :meth:`step` with each new token and None at the end."""
        params = params or SamplingParams()
        if not prompt:
            raise UserError("the prompt is empty")
        if len(prompt) >= self.context:
            raise UserError(
                f"a prompt of {len(prompt):,} tokens does not fit the context of {self.context:,} "
                "(it needs room for at least one new token)"
            )
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise UserError(f"prompt token ids must be in [0, {vocab})")
        request = Request(next(self._ids), list(prompt), params, top_logprobs=top_logprobs, listener=listener)
        request.stops = set(params.stop_token_ids)
        if not params.ignore_eos and self.eos_token_id is not None:
            request.stops.add(self.eos_token_id)
        request.generator = torch.Generator(self.device)
        if params.seed is None:
            request.generator.seed()
        else:
            request.generator.manual_seed(params.seed)
        with self._lock:
            if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(request)
        return request

    def cancel(self, request: Request, reason: str = "cancelled") -> None:
        """Stop ``request`` at the next step and free its row (a client that went away, or
        "stop": its text reached a stop string)."""
        self.cancelled.put((request, reason))

    @property
    def busy(self) -> bool:
        return bool(self.running) or bool(self.waiting) or not self.cancelled.empty()

    def abort(self, reason: str = "error") -> None:
        """End every running and waiting request with ``reason`` and free every row (after a
        failed step: the engine starts clean)."""
        with self._lock:
            waiting, self.waiting = list(self.waiting), collections.deque()
        running, self.running = self.running, []
        for row in range(len(running)):
            self.cache.clear_row(row)
            if self.speculator is not None:
                self.speculator.clear_row(row)
        for request in waiting + running:  # told only once the engine is clean
            request.finish_reason = reason
            request.row = None
            request.publish(None)

    # ------------------------------------------------------------------ stepping

    @torch.inference_mode()
    def step(self) -> None:
        """Decode one token for every running request (finished ones leave), then admit waiting
        requests into the free rows (each prefilled and its first token chosen)."""
        while not self.cancelled.empty():
            request, reason = self.cancelled.get()
            if request.done:
                continue
            request.finish_reason = reason
            if request.row is not None:
                self._finish(request)
                continue
            with self._lock:  # still waiting: it leaves the queue now
                if request in self.waiting:
                    self.waiting.remove(request)
            request.publish(None)
        if self.running:
            self._decode()
        admitted = []
        with self._lock:
            while self.waiting and len(self.running) + len(admitted) < self.max_batch:
                admitted.append(self.waiting.popleft())
        if admitted:
            self._prefill(admitted)

    def run(self) -> None:
        """Step until every queued request has finished."""
        while self.busy:
            self.step()

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Request]:
        """Finish every prompt (batched up to ``max_batch`` at a time); the requests, in order."""
        requests = [self.add(prompt, params) for prompt in prompts]
        self.run()
        return requests

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[int]:
        """One request's new tokens as they are made, stepping the engine in this thread."""
        return self.follow(self.add(prompt, params))

    def follow(self, request: Request) -> Iterator[int]:
        """``request``'s new tokens as they are made, stepping the engine in this thread."""
        while True:
            while not request.events.empty():
                token = request.events.get()
                if token is None:
                    return
                yield token
            self.step()

    # ------------------------------------------------------------------ internals

    def _prefill(self, requests: list[Request]) -> None:
        """Prompts into the next free rows, then each request's first token. Prompts go in
        together (right-padded, the padding's entries cropped) unless the policy watches each
        row's prefill."""
        start = time.perf_counter()
        for request in requests:
            request.row = len(self.running)
            self.running.append(request)
        watched = self.policy.observes_prefill or (self.speculator is not None and self.speculator.observes_prefill)
        groups = [[r] for r in requests] if watched else [requests]
        first_logits = []
        for group in groups:
            first_logits += self._prefill_rows(group)
            for request in group:
                view = self.cache.rows(request.row, request.row + 1)
                self.policy.after_prefill(view)
                request.kv_bytes, request.full_kv_bytes = view.nbytes(), view.full_nbytes()
                if self.speculator is not None:
                    self.speculator.on_prefill(self, request.row, request.prompt)
                self.stats.prompt_tokens += len(request.prompt)
        self.stats.prefill_seconds += time.perf_counter() - start
        for request, logits in zip(requests, first_logits, strict=True):  # rows may move as requests finish
            self._accept(request, logits)

    def _prefill_rows(self, group: list[Request]) -> list[torch.Tensor]:
        """Prefill ``group``'s prompts into its consecutive rows in chunks; each prompt's
        logits (V,) at its last token."""
        lengths = [len(r.prompt) for r in group]
        width = max(lengths)
        view = self.cache.rows(group[0].row, group[-1].row + 1)
        if len(group) == 1:
            observers = [self.policy.prefill_observer(view, width)]
            if self.speculator is not None:
                observers.append(self.speculator.prefill_observer(view, width))
            view.observer = chained([o for o in observers if o is not None])
        ids = torch.tensor([r.prompt + [0] * (width - len(r.prompt)) for r in group], device=self.device)
        last = torch.tensor(lengths, device=self.device)[:, None] - 1  # (B, 1)
        found: list[torch.Tensor | None] = [None] * len(group)
        for begin in range(0, width, self.prefill_chunk):
            chunk = ids[:, begin : begin + self.prefill_chunk]
            index = (last - begin).clamp(0, chunk.shape[1] - 1)
            logits = self.model(chunk, cache=view, logits_index=index).logits[:, 0]
            self.stats.forwards += 1
            for i, n in enumerate(lengths):
                if begin <= n - 1 < begin + chunk.shape[1]:
                    found[i] = logits[i]
        view.observer = None
        if min(lengths) < width:
            view.crop(torch.tensor(lengths))
        return found

    def _decode(self) -> None:
        start = time.perf_counter()
        running = list(self.running)
        if self.speculator is not None:
            self._speculate(running)
        else:
            view = self.cache.rows(0, len(running))
            tokens = torch.tensor([[r.output[-1]] for r in running], device=self.device)
            view.observer = self.policy.decode_observer(view)
            logits = self.model(tokens, cache=view).logits[:, -1]
            view.observer = None
            self.policy.after_step(view)
            plain = all(
                r.params.greedy and r.params.repetition_penalty == 1 and r.top_logprobs is None for r in running
            )
            if plain:  # one argmax for the batch
                for request, token in zip(running, logits.argmax(dim=-1).tolist(), strict=True):
                    request.steps += 1
                    self._emit(request, token)
                return self._count_decode(start)
            for request, row_logits in zip(running, logits, strict=True):  # rows move as requests finish
                request.steps += 1
                self._accept(request, row_logits)
        self._count_decode(start)

    def _count_decode(self, start: float) -> None:
        self.stats.forwards += 1
        self.stats.decode_seconds += time.perf_counter() - start

    def _speculate(self, running: list[Request]) -> None:
        """One round of speculation for every running row: the speculator drafts up to k tokens
        per row and gives the target's logits at the last token and each draft; :func:`accept`
        keeps a prefix of each row's drafts and adds one token of the target's; the caches are
        cropped to what was kept."""
        room = min(self.room(r) for r in running)
        k = max(min(self.speculator.num_speculations, room - 1), 0)
        start = torch.from_numpy(self.cache.end[0, : len(running)].copy())  # position of each row's last token
        drafts, draft_probs, logits = self.speculator.round(self, running, k)
        outcomes = []
        for request, tokens, q, row_logits in zip(running, drafts, draft_probs, logits, strict=True):
            accepted, token, _ = accept(row_logits, q, request, request.prompt + request.output, tokens)
            request.steps += 1
            request.drafted += len(tokens)
            request.accepted += accepted
            outcomes.append((accepted, tokens[:accepted] + [token]))
            self._record_logprobs(request, list(row_logits[: accepted + 1]), outcomes[-1][1])
        ends = start + 1 + torch.tensor([accepted for accepted, _ in outcomes])
        self.cache.rows(0, len(running)).crop(ends)
        self.speculator.after_round(self, running, ends)
        for request, (_, tokens) in zip(running, outcomes, strict=True):
            for token in tokens:
                if not self._emit(request, token):
                    break

    def room(self, request: Request) -> int:
        """How many more tokens ``request`` may make (its budget, the context)."""
        return min(
            request.params.max_new_tokens - len(request.output), self.context - len(request.prompt + request.output)
        )

    def _accept(self, request: Request, logits: torch.Tensor) -> None:
        """Choose ``request``'s next token from its logits (V,) and emit it."""
        token = choose(logits, request.params, request.prompt + request.output, request.generator)
        self._record_logprobs(request, [logits], [token])
        self._emit(request, token)

    @staticmethod
    def _record_logprobs(request: Request, logits: list[torch.Tensor], tokens: list[int]) -> None:
        """The model's log-probabilities (before any sampling shaping) of ``tokens``, each
        made from its logits (V,), with the top alternatives, when the request asked."""
        if request.top_logprobs is None:
            return
        for row_logits, token in zip(logits, tokens, strict=True):
            logprobs = torch.log_softmax(row_logits.float(), dim=-1)
            top = torch.topk(logprobs, request.top_logprobs) if request.top_logprobs else None
            alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            request.logprobs.append((float(logprobs[token]), alternatives))

    def _emit(self, request: Request, token: int) -> bool:
        """Add ``token`` to ``request``'s output, or finish it on a stop token or a limit;
        whether it still runs."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in request.stops:
            request.finish_reason = "stop"
        else:
            request.output.append(token)
            request.publish(token)
            self.stats.new_tokens += 1
            if self.room(request) <= 0:
                request.finish_reason = "length"
        if request.done:
            self._finish(request)
        return not request.done

    def _finish(self, request: Request) -> None:
        """Free ``request``'s row: the last running row moves into it."""
        request.finished_at = time.perf_counter()
        del request.logprobs[len(request.output) :]  # a stop token's, or those of drafts after the end
        row = request.row
        view = self.cache.rows(row, row + 1)
        request.kv_bytes, request.full_kv_bytes = view.nbytes(), view.full_nbytes()
        last = len(self.running) - 1
        if row != last:
            self.cache.move_row(last, row)
            if self.speculator is not None:
                self.speculator.move_row(last, row)
            self.running[row] = self.running[last]
            self.running[row].row = row
        self.running.pop()
        self.cache.clear_row(last)
        if self.speculator is not None:
            self.speculator.clear_row(last)
        request.row = None
        request.publish(None)


class QueueFull(UserError):
    """Too many requests are waiting (a server answers 429)."""


def chained(observers: list[Observer]) -> Observer | None:
    """One observer that calls each of ``observers`` in turn (None for none)."""
    if len(observers) <= 1:
        return observers[0] if observers else None

    def observe(layer: int, queries: torch.Tensor, cache: KVCache) -> None:
        for observer in observers:
            observer(layer, queries, cache)

    return observe
