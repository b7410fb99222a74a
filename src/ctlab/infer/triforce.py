"""TriForce (arXiv 2404.11912): hierarchical speculation for long contexts.

Three levels, each checked by the next with the same acceptance rule (:func:`accept`):

1. a small draft model with a StreamingLLM cache (``sinks`` first + ``recent`` last
   positions) proposes ``draft_speculations`` tokens;
2. the target with a retrieval cache verifies them in one forward: after the prefill, each
   layer and KV head keeps ``budget / chunk`` chunks of ``chunk`` positions — chunk 0, the
   last chunk, and the others whose mean key best matches the prompt's last query (averaged
   over the query heads of the KV head's group) — plus every token generated since. Level 2 repeats until it
   has ``num_speculations`` tokens, each with the distribution it was drawn from;
3. the target with its full cache verifies those, as any speculation in the engine.

The output follows the target's distribution (greedy: the plain greedy output), whatever the
two lower levels propose; they only decide how many tokens a full-cache forward yields. The
retrieval cache reads about ``budget`` entries per step instead of the whole context, which
is what pays off when the context is long. Tokens the target accepts enter the retrieval
cache with the full cache's keys and values (as the reference implementation copies them).
"""

from __future__ import annotations

import math

import torch

from ctlab.errors import UserError
from ctlab.infer.layout import decode_layout
from ctlab.infer.policies import StreamingCache
from ctlab.infer.speculative import (
    Speculator,
    accept,
    catch_up,
    draft_from,
    prefill_draft,
    stacked,
    target_logits,
)
from ctlab.model.cache import EMPTY, KVCache, Observer
from ctlab.model.decoder import Decoder


class LastQuery:
    """Each layer's query at the prompt's last token (B, H, D), across prefill chunks."""

    def __init__(self):
        self.queries: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, queries: torch.Tensor, cache: KVCache) -> None:
        self.queries[layer] = queries[:, :, -1].float()


def retrieval_keep(query: torch.Tensor, keys: torch.Tensor, budget: int, chunk: int) -> torch.Tensor:
    """Which entries (H_kv, S) of one row to keep, in order of position: everything when the
    prompt fits the budget; else chunk 0, the last (most recent, possibly partial) chunk, and
    the ``budget // chunk - 2`` others whose mean key scores best against the last query (H, D),
    the score averaged over each KV head's query group. Every head keeps as many entries."""
    kv_heads, slots, dim = keys.shape
    chunks = math.ceil(slots / chunk)
    if chunks <= budget // chunk:
        return torch.ones(kv_heads, slots, dtype=torch.bool, device=keys.device)
    padded = torch.nn.functional.pad(keys.float(), (0, 0, 0, chunks * chunk - slots))
    counts = torch.full((chunks,), float(chunk), device=keys.device)
    counts[-1] = slots - (chunks - 1) * chunk
    means = padded.view(kv_heads, chunks, chunk, dim).sum(2) / counts[:, None]  # (H_kv, chunks, D)
    group = query.shape[0] // kv_heads
    scores = torch.einsum("hgd,hcd->hc", query.view(kv_heads, group, dim), means) / group
    scores[:, 0] = scores[:, -1] = float("inf")  # the first and the last chunk always stay
    top = scores.topk(budget // chunk, dim=-1).indices
    chosen = torch.zeros(kv_heads, chunks, dtype=torch.bool, device=keys.device).scatter_(1, top, True)
    return chosen.repeat_interleave(chunk, dim=1)[:, :slots]


class TriForce(Speculator):
    name = "triforce"
    observes_prefill = True

    def __init__(
        self,
        draft: Decoder,
        budget: int = 4096,
        chunk: int = 8,
        num_speculations: int = 6,
        draft_speculations: int = 2,
        sinks: int = 16,
        recent: int = 240,
    ):
        super().__init__(num_speculations)
        if budget < 2 * chunk or chunk < 1:
            raise UserError(f"the TriForce budget ({budget}) must hold at least two chunks of {chunk}")
        if draft_speculations < 1:
            raise UserError("TriForce's draft needs at least 1 speculation per step")
        self.draft = draft.eval()
        self.budget, self.chunk, self.draft_speculations = budget, chunk, draft_speculations
        self.streaming = StreamingCache(sinks, recent)
        self._last_query: LastQuery | None = None

    def prepare(self, engine) -> None:
        super().prepare(engine)
        if engine.policy.name != "full":
            raise UserError("TriForce keeps its own caches: use it with the full KV policy")
        if self.draft.config.vocab_size != engine.model.config.vocab_size:
            raise UserError("TriForce's draft model needs the model's tokenizer (the vocabularies differ)")
        if self.draft.config.max_position_embeddings < engine.context:
            raise UserError(
                f"the draft model's context ({self.draft.config.max_position_embeddings:,}) is shorter "
                f"than the engine's ({engine.context:,})"
            )
        decode_layout(self.draft, engine.compile)
        slack = engine.prefill_chunk + self.num_speculations + self.draft_speculations + 2
        self.draft_cache = KVCache.for_model(
            self.draft, engine.max_batch, self.streaming.sinks + self.streaming.recent + slack
        )
        self.retrieval = KVCache.for_model(engine.model, engine.max_batch, engine.context + slack)

    def prefill_observer(self, cache: KVCache, prompt_length: int) -> Observer | None:
        self._last_query = LastQuery()
        return self._last_query

    def on_prefill(self, engine, row: int, prompt: list[int]) -> None:
        """Build the row's retrieval cache from the full one; prefill the draft in a streaming way."""
        full, retrieval = engine.cache.rows(row, row + 1), self.retrieval.rows(row, row + 1)
        for layer in range(full.num_layers):
            keys, values, positions = full.entries(layer)
            keep = retrieval_keep(self._last_query.queries[layer][0], keys[0], self.budget, self.chunk)
            count = int(keep[0].sum())
            index = keep.nonzero()[:, 1].view(1, keep.shape[0], count)  # the same count for every head
            wide = index[..., None].expand(-1, -1, -1, keys.shape[-1])
            retrieval.fill(layer, keys.gather(2, wide), values.gather(2, wide), positions.gather(2, index), len(prompt))
        self._last_query = None
        prefill_draft(
            self.draft, self.draft_cache.rows(row, row + 1), prompt, engine.prefill_chunk, self.streaming.after_step
        )

    def round(self, engine, running, k):
        count = len(running)
        vocab = engine.model.config.vocab_size
        contexts = [r.prompt + r.output for r in running]
        buffers: list[list[int]] = [[] for _ in running]
        distributions: list[list[torch.Tensor]] = [[] for _ in running]
        draft_view, retrieval_view = self.draft_cache.rows(0, count), self.retrieval.rows(0, count)
        while k and all(len(b) < k for b in buffers):
            # a pass's drafts and level 2's token after them stay inside every row's room
            gamma = min(
                self.draft_speculations, min(engine.room(r) - len(b) for r, b in zip(running, buffers, strict=True)) - 1
            )
            if gamma < 1:
                break
            sequences = [c + b for c, b in zip(contexts, buffers, strict=True)]
            catch_up(self.draft, draft_view, sequences)
            start = torch.from_numpy(retrieval_view.end[0].copy())
            # level 1: the draft proposes
            drafts: list[list[int]] = [[] for _ in running]
            proposals: list[list[torch.Tensor]] = [[] for _ in running]
            last = torch.tensor([[s[-1]] for s in sequences], device=engine.device)
            for _ in range(gamma):
                logits = self.draft(last, cache=draft_view).logits[:, -1]
                shifted = [_Shifted(r, b) for r, b in zip(running, buffers, strict=True)]
                for row, q in enumerate(draft_from(logits, shifted, drafts)):
                    proposals[row].append(q)
                last = torch.tensor([[d[-1]] for d in drafts], device=engine.device)
            # level 2: the target with the retrieval cache checks them in one forward
            tokens = [[s[-1], *d] for s, d in zip(sequences, drafts, strict=True)]
            logits = engine.model(torch.tensor(tokens, device=engine.device), cache=retrieval_view).logits
            kept = []
            for row, request in enumerate(running):
                draft = stacked([proposals[row]], vocab, engine.device)[0]
                accepted, token, p = accept(logits[row], draft, request, sequences[row], drafts[row])
                buffers[row] += drafts[row][:accepted] + [token]
                distributions[row] += [None] * (accepted + 1) if p is None else list(p[: accepted + 1])
                kept.append(accepted)
            ends = start + 1 + torch.tensor(kept)
            retrieval_view.crop(ends)
            draft_view.crop(ends)
            self.streaming.after_step(draft_view)
        drafts = [b[:k] for b in buffers]
        return (
            drafts,
            stacked([d[:k] for d in distributions], vocab, engine.device),
            target_logits(engine, running, drafts, k),
        )

    def after_round(self, engine, running, ends):
        """The retrieval cache takes the accepted tokens' entries from the full cache."""
        count = len(running)
        retrieval, full = self.retrieval.rows(0, count), engine.cache.rows(0, count)
        starts = [len(r.prompt) + len(r.output) - 1 for r in running]  # each row's last token before the round
        retrieval.crop(torch.tensor(starts))
        for row, (start, end) in enumerate(zip(starts, ends.tolist(), strict=True)):
            target, source = retrieval.rows(row, row + 1), full.rows(row, row + 1)
            for layer in range(full.num_layers):
                keys, values, positions = source.entries(layer)
                new = (positions[0, 0] >= start) & (positions[0, 0] < end) & (positions[0, 0] != EMPTY)
                target.update(layer, keys[:, :, new], values[:, :, new], positions[:, 0, new])
        self.draft_cache.rows(0, count).crop(ends)

    def move_row(self, source: int, target: int) -> None:
        self.draft_cache.move_row(source, target)
        self.retrieval.move_row(source, target)

    def clear_row(self, row: int) -> None:
        self.draft_cache.clear_row(row)
        self.retrieval.clear_row(row)


class _Shifted:
    """A request seen with extra tokens after its output (level 2's buffer), for drafting."""

    def __init__(self, request, extra: list[int]):
        self.prompt, self.output = request.prompt, request.output + extra
        self.params, self.generator = request.params, request.generator
