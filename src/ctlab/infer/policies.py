"""KV-cache policies: given a row's cache and the evidence a policy asked for, which entries to keep.

A policy may ask for each layer's queries during a prefill (:meth:`KVPolicy.prefill_observer`)
or a decode step (:meth:`KVPolicy.decode_observer`), and evicts with
:meth:`~ctlab.model.cache.KVCache.select` after them. Entries keep their original positions,
so eviction never moves a later token's rotary angle.

- ``full``: keeps everything.
- ``streaming`` (StreamingLLM, arXiv 2309.17453): the first ``sinks`` positions and the last
  ``recent``. Unlike StreamingLLM, positions stay the tokens' own (ctlab never decodes past the
  model's context, so no re-indexing inside the cache is needed).
- ``snapkv`` (arXiv 2404.14469): after the prefill, the last ``window`` queries' attention
  (softmax in fp32, causal inside the window) over the prefix keys, averaged over the window,
  pooled along positions (avg or max, stride 1, same padding), averaged over each GQA query
  group; the top ``capacity - window`` prefix positions per KV head and the whole window stay.
  Prompts no longer than ``capacity`` are left alone. The same scoring as kvpress's
  ``SnapKVPress`` (checked in the tests).
- ``corm`` (arXiv 2404.15949): during decoding, a key whose attention from every one of the
  last ``window`` queries stayed below 1/t (t: the entries the query attends to) is evicted;
  the ``recent`` newest are always kept. The prompt's last ``window`` queries count as the
  first ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctlab.errors import UserError
from ctlab.model.cache import KVCache, Observer


class KVPolicy:
    """Keeps every entry; subclasses say what to evict."""

    name = "full"
    observes_prefill = False  # True: asks for each row's prefill queries (the engine prefills rows one at a time)

    def check(self, context: int) -> None:
        """Refuse settings that do not fit a cache of ``context`` positions (:class:`UserError`)."""

    def prepare(self, cache: KVCache) -> None:
        """Set up the engine's whole cache once (before any row is used)."""

    def prefill_observer(self, cache: KVCache, prompt_length: int) -> Observer | None:
        """What to call with each layer's queries while a row's prompt is prefilled."""
        return None

    def after_prefill(self, cache: KVCache) -> None:
        """Evict from the row ``cache`` (a one-row view) once its prompt is in."""

    def decode_observer(self, cache: KVCache) -> Observer | None:
        return None

    def after_step(self, cache: KVCache) -> None:
        """Evict from the running rows ``cache`` after a decode step."""


FullCache = KVPolicy


class StreamingCache(KVPolicy):
    name = "streaming"
    default_recent = 1020  # with the 4 sinks: a 1,024-entry cache

    def __init__(self, sinks: int = 4, recent: int = default_recent):
        self.sinks, self.recent = sinks, recent

    def check(self, context: int) -> None:
        if self.recent < 1:
            raise UserError("the streaming cache needs a recent window of at least 1")

    def _evict(self, cache: KVCache) -> None:
        end = torch.from_numpy(cache.end.copy()).to(cache.keys[0].device)
        for layer in range(cache.num_layers):
            if cache.used(layer) <= self.sinks + self.recent:
                continue
            _, _, positions = cache.entries(layer)
            newest = end[layer].view(-1, 1, 1)
            cache.select(layer, (positions < self.sinks) | ((positions >= newest - self.recent) & (positions < newest)))

    after_prefill = _evict
    after_step = _evict


class WindowQueries:
    """Collects each layer's last ``window`` queries (B, H, ≤window, D) across prefill chunks."""

    def __init__(self, window: int):
        self.window = window
        self.queries: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, queries: torch.Tensor, cache: KVCache) -> None:
        if layer in self.queries:
            queries = torch.cat([self.queries[layer], queries], dim=2)
        self.queries[layer] = queries[:, :, -self.window :].float()


def query_attention(
    queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, query_positions: torch.Tensor
) -> torch.Tensor:
    """Attention (B, H, W, S) fp32 of W queries (B, H, W, D) at ``query_positions`` (B or 1, W)
    over a row's entries: keys (B, H_kv, S, D) at ``positions`` (B, H_kv, S); each query sees
    the entries at or before its position."""
    group = queries.shape[1] // keys.shape[1]
    scores = queries.float() @ keys.float().repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(queries.shape[-1])
    visible = positions.repeat_interleave(group, 1)[:, :, None, :] <= query_positions[:, None, :, None]
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)


def last_positions(end: int, count: int, device) -> torch.Tensor:
    """(1, count) positions of a prompt's last ``count`` tokens."""
    return torch.arange(end - count, end, device=device)[None]


class SnapKV(KVPolicy):
    name = "snapkv"
    observes_prefill = True

    default_capacity = 2048  # the official default

    def __init__(self, capacity: int = default_capacity, window: int = 32, kernel: int = 5, pooling: str = "avg"):
        self.capacity, self.window, self.kernel, self.pooling = capacity, window, kernel, pooling
        self._collector: WindowQueries | None = None

    def check(self, context: int) -> None:
        if self.pooling not in ("avg", "max"):
            raise UserError(f"unknown SnapKV pooling {self.pooling!r} (avg or max)")
        if not 0 < self.window < self.capacity:
            raise UserError(f"SnapKV's window ({self.window}) must be below its capacity ({self.capacity})")
        if self.capacity > context:
            raise UserError(f"a SnapKV capacity of {self.capacity:,} is larger than the context of {context:,}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise UserError("SnapKV's pooling kernel must be an odd number ≥ 1")

    def prefill_observer(self, cache: KVCache, prompt_length: int) -> Observer | None:
        self._collector = WindowQueries(self.window) if prompt_length > self.capacity else None
        return self._collector

    def scores(self, queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, end: int) -> torch.Tensor:
        """Importance (B, H_kv, S - W) of a row's prefix entries (positions 0..end-W-1, in order)."""
        group = queries.shape[1] // keys.shape[1]
        prefix = end - self.window
        attention = query_attention(queries, keys, positions, last_positions(end, self.window, keys.device))
        attention = attention[..., :prefix].mean(dim=-2)  # (B, H, prefix)
        pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
        pooled = pool(attention, kernel_size=self.kernel, padding=self.kernel // 2, stride=1)
        return pooled.view(keys.shape[0], keys.shape[1], group, prefix).mean(dim=2)

    def after_prefill(self, cache: KVCache) -> None:
        if self._collector is None:
            return
        end = int(cache.end[0, 0])
        for layer in range(cache.num_layers):
            keys, _, positions = cache.entries(layer)
            scores = self.scores(self._collector.queries[layer], keys, positions, end)
            top = scores.topk(self.capacity - self.window, dim=-1).indices
            keep = positions >= end - self.window
            keep[..., : end - self.window].scatter_(-1, top, True)
            cache.select(layer, keep)
        self._collector = None


class CORM(KVPolicy):
    name = "corm"
    observes_prefill = True

    def __init__(self, window: int = 32, recent: int = 32):
        self.window, self.recent = window, recent
        self._collector: WindowQueries | None = None

    def check(self, context: int) -> None:
        if self.window < 1 or self.recent < self.window:
            raise UserError("CORM needs a query window ≥ 1 and a recent span at least as long (recent ≥ window)")

    def prepare(self, cache: KVCache) -> None:
        cache.track_marks()

    def prefill_observer(self, cache: KVCache, prompt_length: int) -> Observer | None:
        self._collector = WindowQueries(self.window)
        return self._collector

    def after_prefill(self, cache: KVCache) -> None:
        """The prompt's last ``window`` queries are the first evidence."""
        end = int(cache.end[0, 0])
        for layer in range(cache.num_layers):
            keys, _, positions = cache.entries(layer)
            queries = self._collector.queries[layer]
            query_positions = last_positions(end, queries.shape[2], keys.device)  # (1, W)
            attention = query_attention(queries, keys, positions, query_positions)  # (1, H, W, S)
            self._mark(cache, layer, attention, query_positions.view(1, 1, -1, 1), (query_positions + 1)[None])
        self._collector = None
        self._evict(cache)

    def decode_observer(self, cache: KVCache) -> Observer | None:
        def observe(layer: int, queries: torch.Tensor, cache: KVCache) -> None:
            keys, _, positions = cache.entries(layer)
            query_position = torch.from_numpy(cache.end[layer].copy()).to(keys.device) - 1  # (B,)
            attention = query_attention(queries, keys, positions, query_position[:, None])  # (B, H, 1, S)
            live = torch.from_numpy(cache.lengths[layer].copy()).to(keys.device)  # (B, H_kv): what it attends to
            self._mark(cache, layer, attention, query_position.view(-1, 1, 1, 1), live[..., None])

        return observe

    @staticmethod
    def _mark(cache: KVCache, layer: int, attention: torch.Tensor, query_positions, seen) -> None:
        """Mark each entry with the latest query that gave it attention ≥ 1/t, over the queries
        (B, H, W, S) at ``query_positions`` (broadcast to it) of the heads of its KV head's group;
        ``seen``: t, the entries each query attends to, (B or 1, H_kv or 1, W)."""
        batch, heads, window, slots = attention.shape
        kv_heads = cache.keys[layer].shape[1]
        group = heads // kv_heads
        seen = seen.expand(batch, kv_heads, window).repeat_interleave(group, 1)
        important = attention >= 1.0 / seen[..., None]
        latest = torch.where(important, query_positions, -1).amax(dim=2)  # (B, H, S)
        latest = latest.view(batch, kv_heads, group, slots).amax(dim=2)
        marks = cache.marks[layer][:, :, :slots]
        marks.copy_(torch.maximum(marks, latest))

    def after_step(self, cache: KVCache) -> None:
        self._evict(cache)

    def _evict(self, cache: KVCache) -> None:
        """Drop the entries older than ``recent`` that have not mattered to the last ``window`` queries."""
        for layer in range(cache.num_layers):
            _, _, positions = cache.entries(layer)
            newest = torch.from_numpy(cache.end[layer].copy()).to(positions.device).view(-1, 1, 1) - 1
            marks = cache.marks[layer][:, :, : positions.shape[-1]]
            keep = (positions > newest - self.recent) | (newest - marks < self.window)
            if not bool(keep.all()):
                cache.select(layer, keep)


POLICIES = {"full": FullCache, "streaming": StreamingCache, "snapkv": SnapKV, "corm": CORM}
