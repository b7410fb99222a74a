"""The KV cache of inference: preallocated, per row, per layer and per KV head, with positions.

Cache compression (SnapKV, CORM, StreamingLLM, TriForce's retrieval cache) keeps different
entries in every layer and KV head; speculative decoding grows some layers ahead of others
(LayerSkip's draft fills the layers below its exit) and drops rejected tokens; a server's
batch holds requests of different lengths. So the cache stores, for each layer ``l``:

- ``keys[l]``, ``values[l]``: (B, H_kv, C_l, D), allocated once (C_l: the layer's capacity);
- ``positions[l]``: (B, H_kv, C_l) int64, the original position of each entry (its RoPE
  angle was taken there), :data:`EMPTY` in a free slot;
- ``lengths[l]``: (B, H_kv) host-side counts: the entries of a row and head fill slots
  [0, length) in order of position.

A query at position p attends to the entries whose position is ≤ p, so evicting entries
never shifts a later token's position, and free slots (position :data:`EMPTY`) are never
seen. GQA is kept per KV head: the cache never repeats KV heads.

``rows(a, b)`` is a view of rows [a, b) over the same storage (a request's prefill, the
active rows of a batch). ``observer``, when set, receives each layer's queries as attention
runs (the evidence a policy or an evaluation asks for); None by default, and then free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

EMPTY = torch.iinfo(torch.int64).max  # the position of a free slot: no query is that late

Observer = Callable[[int, torch.Tensor, "KVCache"], None]  # (layer, queries (B, H, T, D), cache)


class CacheFull(RuntimeError):
    """More entries than a layer's capacity: the caller sized the cache too small."""


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int | Sequence[int],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        capacities = [capacity] * num_layers if isinstance(capacity, int) else list(capacity)
        if len(capacities) != num_layers or min(capacities) < 1:
            raise ValueError(f"one capacity ≥ 1 per layer is needed, got {capacity}")
        self.keys = [torch.zeros(batch, num_kv_heads, c, head_dim, device=device, dtype=dtype) for c in capacities]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.positions = [torch.full((batch, num_kv_heads, c), EMPTY, device=device) for c in capacities]
        self.lengths = np.zeros((num_layers, batch, num_kv_heads), dtype=np.int64)
        self.end = np.zeros((num_layers, batch), dtype=np.int64)  # tokens appended per row: the next position
        self.observer: Observer | None = None
        self.marks: list[torch.Tensor] | None = None  # see track_marks

    @classmethod
    def for_model(cls, model, batch: int, capacity: int | Sequence[int], device=None, dtype=None) -> KVCache:
        """An empty cache shaped for ``model`` (a :class:`~ctlab.model.decoder.Decoder`), on its
        device and in its dtype unless given."""
        config, weight = model.config, model.norm.weight  # a plain parameter whatever the quantisation
        return cls(
            config.num_layers,
            batch,
            config.num_kv_heads,
            config.head_dim,
            capacity,
            weight.device if device is None else device,
            weight.dtype if dtype is None else dtype,
        )

    # ------------------------------------------------------------------ shape and size

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def capacity(self, layer: int) -> int:
        return self.keys[layer].shape[2]

    def used(self, layer: int) -> int:
        """The slots of ``layer`` that any row or head fills: attention reads [0, used)."""
        return int(self.lengths[layer].max(initial=0))

    def nbytes(self) -> int:
        """Bytes of the keys and values the cache holds (live entries, not allocated slots)."""
        return int(self.lengths.sum()) * self._entry_bytes()

    def full_nbytes(self) -> int:
        """The bytes a full cache would hold for the tokens seen (every layer and KV head)."""
        return int(self.end.sum()) * self.keys[0].shape[1] * self._entry_bytes()

    def _entry_bytes(self) -> int:
        """The key and the value of one position in one KV head."""
        return 2 * self.keys[0].shape[3] * self.keys[0].element_size()

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows [start, stop): writes through it land in this cache."""
        view = object.__new__(KVCache)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.positions = [p[start:stop] for p in self.positions]
        view.lengths = self.lengths[:, start:stop]
        view.end = self.end[:, start:stop]
        view.observer = self.observer
        view.marks = None if self.marks is None else [m[start:stop] for m in self.marks]
        return view

    def track_marks(self) -> None:
        """Give every entry an int64 mark (-1 when written) that moves with it through
        :meth:`select`, :meth:`move_row` and :meth:`clear_row`: a policy's per-entry record
        (CORM: the last query position the entry mattered to)."""
        if self.marks is None:
            self.marks = [torch.full_like(p, -1) for p in self.positions]

    def entries(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """keys, values (B, H_kv, S, D) and positions (B, H_kv, S) of ``layer`` over the used
        slots S (free slots have position :data:`EMPTY`)."""
        used = self.used(layer)  # narrow: a decode step calls this per layer, and it is cheaper than slicing
        return (
            self.keys[layer].narrow(2, 0, used),
            self.values[layer].narrow(2, 0, used),
            self.positions[layer].narrow(2, 0, used),
        )

    # ------------------------------------------------------------------ writing

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Append (B, H_kv, T, D) keys/values of tokens at ``positions`` (B, T) to ``layer``.

        Returns what attention of the T new queries reads: keys, values (B, H_kv, S, D), and
        either a mask (B, H_kv, T, S) (True: may attend) or None with ``causal`` telling whether
        the plain causal mask applies (the T tokens are the layer's first) or none at all (one
        query that sees every entry).
        """
        batch, _, length, _ = keys.shape
        start = self.lengths[layer]
        if int(start.max(initial=0)) + length > self.capacity(layer):
            raise CacheFull(
                f"layer {layer}: {int(start.max())} + {length} entries exceed its capacity of {self.capacity(layer)}"
            )
        uniform = bool((start == start.flat[0]).all()) if start.size else True
        if uniform:
            first = int(start.flat[0]) if start.size else 0
            self._write(layer, first, keys, values, positions)
        else:
            slots = torch.from_numpy(start).to(keys.device)[..., None] + torch.arange(length, device=keys.device)
            wide = slots[..., None].expand_as(keys)
            self.keys[layer].scatter_(2, wide, keys)
            self.values[layer].scatter_(2, wide, values)
            self.positions[layer].scatter_(2, slots, positions[:, None, :].expand_as(slots).contiguous())
            if self.marks is not None:
                self.marks[layer].scatter_(2, slots, torch.full_like(slots, -1))
        start += length
        self.end[layer] += length
        cached_keys, cached_values, cached_positions = self.entries(layer)
        if uniform and first == 0:
            return cached_keys, cached_values, None, length > 1
        if length == 1 and uniform:  # one newest query per row: every entry is visible
            return cached_keys, cached_values, None, False
        mask = cached_positions[:, :, None, :] <= positions[:, None, :, None]
        return cached_keys, cached_values, mask, False

    def fill(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, end) -> None:
        """Make ``layer`` hold exactly the entries keys, values (B, H_kv, n, D) at ``positions``
        (B, H_kv, n), in order of position, with ``end`` (int or (B,)) the rows' next position:
        a cache built from another (TriForce's retrieval cache)."""
        count = keys.shape[2]
        if count > self.capacity(layer):
            raise CacheFull(f"layer {layer}: {count} entries exceed its capacity of {self.capacity(layer)}")
        self.keys[layer][:, :, :count] = keys
        self.values[layer][:, :, :count] = values
        self.positions[layer][:, :, :count] = positions
        self.positions[layer][:, :, count:] = EMPTY
        self.lengths[layer] = count
        self.end[layer] = end

    def next_positions(self, length: int, layer: int = 0) -> torch.Tensor:
        """(B, length) positions for the next ``length`` tokens of each row at ``layer``."""
        return torch.from_numpy(self.end[layer][:, None] + np.arange(length)).to(self.keys[layer].device)

    def _write(self, layer: int, first: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Write T entries, keys and values (B, H_kv, T, D) at ``positions`` (B, T), into slots
        [first, first + T) of every row and head of ``layer`` (counting them is the caller's)."""
        length = keys.shape[2]
        self.keys[layer].narrow(2, first, length).copy_(keys)
        self.values[layer].narrow(2, first, length).copy_(values)
        self.positions[layer].narrow(2, first, length).copy_(positions[:, None, :])
        if self.marks is not None:
            self.marks[layer].narrow(2, first, length).fill_(-1)

    def single_slots(self, layers: range, length: int = 1) -> list[int] | None:
        """The slot of the next entry in each of ``layers`` when the cache holds one row whose KV
        heads hold equally many entries (at least one), and every layer has room for ``length``
        more: a batch-1 decode step (or a verification of ``length`` tokens), whose tokens
        attend to every entry held and then :meth:`append_rows`. None otherwise."""
        if self.batch != 1:
            return None
        counts = self.lengths[layers.start : layers.stop, 0]  # (layers, H_kv)
        if (counts != counts[:, :1]).any() or not counts.all():
            return None
        slots = counts[:, 0].tolist()
        if any(slot + length > self.capacity(layer) for layer, slot in zip(layers, slots, strict=True)):
            return None
        return slots

    def append_rows(
        self,
        layers: range,
        slots: list[int],
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        positions: torch.Tensor,
    ) -> None:
        """Append T tokens' keys and values (1, H_kv, T, D) at ``positions`` (1, T) to each of
        ``layers``, from the slot :meth:`single_slots` gave (which checked the room)."""
        for layer, slot, key, value in zip(layers, slots, keys, values, strict=True):
            self._write(layer, slot, key, value, positions)
        self.lengths[layers.start : layers.stop] += positions.shape[1]
        self.end[layers.start : layers.stop] += positions.shape[1]

    # ------------------------------------------------------------------ eviction

    def select(self, layer: int, keep: torch.Tensor) -> None:
        """Keep the entries of ``layer`` where ``keep`` (B, H_kv, S) is True (S = :meth:`used`
        slots), each row and head compacted to the front in order of position."""
        used = self.used(layer)
        if keep.shape != (*self.lengths[layer].shape, used):
            raise ValueError(f"keep must be (B, H_kv, {used}), got {tuple(keep.shape)}")
        keys, values, positions = self.entries(layer)
        keep = keep & (positions != EMPTY)
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices  # kept slots first
        kept_positions = torch.where(keep, positions, EMPTY).gather(-1, order)
        wide = order[..., None].expand_as(keys)
        keys.copy_(keys.gather(2, wide))
        values.copy_(values.gather(2, wide))
        positions.copy_(kept_positions)
        if self.marks is not None:
            marks = self.marks[layer][:, :, :used]
            marks.copy_(torch.where(keep, marks, -1).gather(-1, order))
        self.lengths[layer] = keep.sum(-1).cpu().numpy()

    def crop(self, end: int | torch.Tensor, layers: range | None = None) -> None:
        """Drop the entries at positions ≥ ``end`` (an int or (B,) per row) from ``layers``
        (default all): a rejected speculation, a branch taken back."""
        for layer in range(self.num_layers) if layers is None else layers:
            _, _, positions = self.entries(layer)
            bound = torch.as_tensor(end, device=positions.device).reshape(-1, 1, 1)
            kept = positions < bound
            positions.masked_fill_(~kept, EMPTY)
            self.lengths[layer] = kept.sum(-1).cpu().numpy()
            self.end[layer] = np.minimum(self.end[layer], torch.as_tensor(end).cpu().numpy())

    # ------------------------------------------------------------------ rows of a batch

    def move_row(self, source: int, target: int) -> None:
        """Copy row ``source``'s entries over row ``target`` (a batch keeping its rows together)."""
        for layer in range(self.num_layers):
            used = self.used(layer)
            tensors = [self.keys[layer], self.values[layer], self.positions[layer]]
            for tensor in tensors + ([self.marks[layer]] if self.marks is not None else []):
                tensor[target, :, :used] = tensor[source, :, :used]
        self.lengths[:, target] = self.lengths[:, source]
        self.end[:, target] = self.end[:, source]

    def clear_row(self, row: int) -> None:
        """Empty ``row`` (its slots free, its next position 0)."""
        for layer in range(self.num_layers):
            self.positions[layer][row, :, : self.used(layer)] = EMPTY
            if self.marks is not None:
                self.marks[layer][row] = -1
        self.lengths[:, row] = 0
        self.end[:, row] = 0
