"""Training batches from a packed folder: shuffled, sharded over data-parallel ranks, resumable.

The loader reads an endless *stream* of sequence indices: epoch ``e`` is a permutation of all
sequences drawn from ``(seed, e)``, and epochs follow one another. Global batch ``k`` is stream
positions ``[k·B·W, (k+1)·B·W)`` (B = per-rank batch, W = world size); rank ``r`` takes the
``r``-th block of B. So every rank always gets full batches, each epoch visits every sequence
exactly once across ranks, and the whole state is one integer (the stream position), which
stays valid when a run resumes with another world size at the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ctlab.errors import UserError
from ctlab.tokens.packed import PackedDataset


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch: ``input_ids``, ``labels``, ``position_ids``, each (B, L) int64,
    and any other per-token array the samples carry. Documents are told apart by their position
    ids, which restart at 0 at each one."""
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


class PackedLoader:
    """Endless iterator of batches for one rank (see the module docstring).

    Args:
        dataset: a :class:`PackedDataset` (or its folder), or any rows with ``len``, indexing and
            a ``folder`` to name in messages (fine-tuning's packed examples).
        batch_size: sequences per batch on this rank.
        seed: shuffling seed, the same on every rank.
        rank, world_size: this process's place among the data-parallel ranks.
        position: stream position to start from (``state_dict()["position"]`` of a saved run).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ):
        self.dataset = PackedDataset(dataset) if isinstance(dataset, str | Path) else dataset
        if len(self.dataset) == 0:
            raise UserError(f"{self.dataset.folder} holds no sequences")
        if position < 0:
            raise ValueError(f"the stream position cannot be negative ({position})")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad loader shape: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self._epoch = -1
        self._permutation = np.zeros(0, dtype=np.int64)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (fractional)."""
        return self.position / len(self.dataset)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return int(self._permutation[offset])

    def next_indices(self) -> list[int]:
        """The sequence indices of this rank's next batch; advances the stream by a global batch."""
        first = self.position + self.rank * self.batch_size
        indices = [self._index(p) for p in range(first, first + self.batch_size)]
        self.position += self.global_batch_size
        return indices

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate([self.dataset[i] for i in self.next_indices()])

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where the saved loader stopped; its seed and global batch must be this one's."""
        if state["seed"] != self.seed:
            raise UserError(f"the saved data order is for seed {state['seed']}, not {self.seed}")
        if state["global_batch_size"] != self.global_batch_size:
            raise UserError(
                f"the run took {state['global_batch_size']} sequences per step from {self.dataset.folder}, "
                f"not {self.global_batch_size}: resume with the same batch size and number of processes"
            )
        self.position = state["position"]
