"""A second objective for the shared loop's tests: does a row of token ids contain the marker token?

A sequence-level classification on the decoder itself (the logits of two class tokens at the
last position), with its own config (a declaration on top of the loop's), batches and
held-out evaluation: if it gets gradient-accumulation, data-parallel and resume invariance
from :func:`ctlab.train.loop.fit` unchanged, so does any objective written the same way.

Run as a script (``python toy_objective.py CONFIG.yaml``, or under torchrun) to train it.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from pydantic import PositiveInt

from ctlab.config import config, parse, read_yaml
from ctlab.errors import UserError
from ctlab.model.config import preset
from ctlab.model.decoder import Decoder
from ctlab.train.config import LoopConfig
from ctlab.train.distributed import Distributed, distributed
from ctlab.train.loop import Batches, Loss, Objective, fit

VOCAB, LENGTH, MARKER, ROWS = 64, 12, 7, 256
CLASS_TOKENS = [1, 2]  # the logits of these two tokens at the last position are the two classes


@config
class ToyConfig(LoopConfig):
    batch_size: PositiveInt = 4  # rows per micro-batch per process
    data_seed: int = 1234


def rows(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rows of LENGTH token ids (none is MARKER) where half get one MARKER: (count, LENGTH), (count,)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (count, LENGTH), generator=generator)
    labels = torch.arange(count) % 2
    places = torch.randint(0, LENGTH - 1, (count,), generator=generator)
    ids[labels == 1, places[labels == 1]] = MARKER
    return ids, labels


class RowBatches(Batches):
    """Global batch k is rows [k·B·W, (k+1)·B·W) of the stream (cycling); rank r takes block r."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, batch_size: int, env: Distributed):
        self.ids, self.labels, self.batch_size, self.env = ids, labels, batch_size, env
        self.position = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.env.world_size

    def next(self) -> dict[str, torch.Tensor]:
        start = self.position + self.env.rank * self.batch_size
        index = torch.arange(start, start + self.batch_size) % len(self.ids)
        self.position += self.global_batch_size
        return {"input_ids": self.ids[index], "labels": self.labels[index]}

    def state(self) -> dict:
        return {"position": self.position, "global_batch_size": self.global_batch_size}

    def restore(self, state: dict) -> None:
        if state["global_batch_size"] != self.global_batch_size:
            raise UserError(f"the run took {state['global_batch_size']} rows per step, not {self.global_batch_size}")
        self.position = state["position"]


class ContainsMarker(Objective):
    kind = "toy-classify"

    def __init__(self, config: ToyConfig, env: Distributed):
        ids, labels = rows(config.data_seed, ROWS + 64)
        self.batches = RowBatches(ids[:ROWS], labels[:ROWS], config.batch_size, env)
        self.heldout = ids[ROWS:], labels[ROWS:]
        torch.manual_seed(config.seed)
        shape = dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)
        self.model = Decoder(preset("tiny", **shape))

    def count(self, batch: dict) -> int:
        return len(batch["labels"])

    def _scores(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids).logits[:, -1, CLASS_TOKENS].float()

    def loss(self, model: torch.nn.Module, batch: dict, step: int, rng: torch.Generator) -> Loss:
        scores = self._scores(model, batch["input_ids"])
        total = F.cross_entropy(scores, batch["labels"], reduction="sum")
        correct = (scores.argmax(-1) == batch["labels"]).sum().float()
        return Loss(total, {"loss": total.detach(), "accuracy": correct})

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, dict]:
        ids, labels = self.heldout
        device = next(model.parameters()).device
        scores = self._scores(model, ids.to(device))
        loss = F.cross_entropy(scores, labels.to(device)).item()
        accuracy = (scores.argmax(-1).cpu() == labels).float().mean().item()
        return {"heldout": {"loss": loss, "accuracy": accuracy}}


def train(config: ToyConfig) -> dict:
    with distributed(config.device) as env:
        return fit(ContainsMarker(config, env), config, env, progress=False)


if __name__ == "__main__":
    train(parse(ToyConfig, read_yaml(sys.argv[1], "toy config"), "toy config"))
