"""``ctlab train pretrain``: next-token pretraining, the first objective of the shared loop.

A model from a preset (or from a checkpoint: continual pretraining, with replay of the old
data mixed into each batch) learns from a packed folder. The loss is the token-level
cross-entropy, with LayerSkip's layer dropout and early-exit loss as options; the evaluation
is held-out perplexity per set; routed models log their expert use. Accumulation,
parallelism, checkpoints, resume and metrics are :func:`ctlab.train.loop.fit`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ctlab.config import to_dict
from ctlab.errors import UserError
from ctlab.eval.score import packed_batches, perplexity
from ctlab.model.config import preset
from ctlab.model.decoder import Decoder, DecoderOutput
from ctlab.model.hf import load_model
from ctlab.runs import latest_checkpoint
from ctlab.tokens.loader import PackedLoader
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset, tokenizer_sha256
from ctlab.train import layerskip
from ctlab.train.config import PretrainConfig
from ctlab.train.distributed import Distributed, distributed
from ctlab.train.loop import Batches, Loss, Objective, fit


class PackedBatches(Batches):
    """This rank's micro-batches from a packed folder, ``replay_ratio`` of each batch's rows
    drawn from the replay data (continual pretraining)."""

    def __init__(self, config: PretrainConfig, env: Distributed):
        replay_rows = round(config.batch_size * config.replay_ratio) if config.replay_data else 0
        self.main = PackedLoader(config.data, config.batch_size - replay_rows, config.seed, env.rank, env.world_size)
        self.replay = None
        if replay_rows:
            self.replay = PackedLoader(config.replay_data, replay_rows, config.seed, env.rank, env.world_size)
            if self.replay.dataset.seq_len != self.main.dataset.seq_len:
                raise UserError("replay_data and data are packed to different sequence lengths")

    def next(self) -> dict[str, torch.Tensor]:
        batch = next(self.main)
        if self.replay is None:
            return batch
        replayed = next(self.replay)
        return {key: torch.cat([batch[key], replayed[key]]) for key in batch}

    def state(self) -> dict:
        return {"main": self.main.state_dict(), "replay": None if self.replay is None else self.replay.state_dict()}

    def restore(self, state: dict) -> None:
        self.main.load_state_dict(state["main"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (fp32) of logits (B, T, V) against labels (B, T), ignoring IGNORE_INDEX."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def model_loss(
    model, batch: dict, config: PretrainConfig, step: int, rng: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, DecoderOutput]:
    """Summed LM loss (with LayerSkip's early exits when on), the summed last-layer CE, the output.
    ``rng``: the generator of this micro-batch's layer dropout."""
    inner = model.module if hasattr(model, "module") else model
    num_layers = inner.config.num_layers
    rates = layerskip.dropout_rates(config.layerskip, num_layers, step, config.steps)
    skip = layerskip.sample_skips(rates, batch["input_ids"].shape[0], rng)
    active = layerskip.curriculum(config.layerskip, num_layers, step, config.steps)
    early_exit = any(active[:-1])
    out = model(batch["input_ids"], batch["position_ids"], skip=skip, output_hidden_states=early_exit)
    last = token_losses(out.logits, batch["labels"])
    if not early_exit:
        return last, last.detach(), out
    weights = layerskip.exit_weights(config.layerskip, active)
    loss = weights[-1] * last
    for layer, weight in enumerate(weights[:-1]):
        if weight:
            loss = loss + weight * token_losses(inner.exit_logits(out.hidden_states[layer + 1]), batch["labels"])
    return loss, last.detach(), out


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


class Pretraining(Objective):
    kind = "pretrain"
    title = "Pretraining loss"

    def __init__(self, config: PretrainConfig, env: Distributed):
        self.config = config
        self.batches = PackedBatches(config, env)  # a bad --data is refused before the run folder is touched
        data = self.batches.main.dataset
        self.tokenizer_dir = str(Path(data.tokenizer["path"]).parent)
        if tokenizer_sha256(self.tokenizer_dir) != data.tokenizer["sha256"]:
            raise UserError(f"{data.tokenizer['path']} is not the tokenizer {config.data} was tokenised with")
        self.eval_sets = {name: PackedDataset(path) for name, path in config.eval_data.items()}
        for name, dataset in self.eval_sets.items():
            data.check_tokenizer(f"the held-out set {name} ({dataset.folder})", dataset.tokenizer["sha256"])
        if self.batches.replay is not None:
            data.check_tokenizer(f"replay_data {config.replay_data}", self.batches.replay.dataset.tokenizer["sha256"])
        self.model = self._build_model(data)
        context = self.model.config.max_position_embeddings
        for dataset in [data, *self.eval_sets.values()]:
            if dataset.seq_len > context:
                raise UserError(
                    f"{dataset.folder} holds sequences of {dataset.seq_len:,} tokens, longer than the model's "
                    f"context of {context:,}: pack shorter sequences or raise model.max_position_embeddings"
                )
        self.unused_parameters = config.layerskip.p_max > 0  # a layer every sample of a rank skips
        self._routers: list = []
        self._aux = 0.0

    def _build_model(self, data: PackedDataset) -> Decoder:
        config = self.config
        if config.init_from:
            if config.preset is not None or config.model:
                raise UserError("--init-from takes the model from the checkpoint: drop --preset and model.* settings")
            checkpoint = latest_checkpoint(config.init_from)
            model = load_model(checkpoint)
            data.check_tokenizer(
                f"--init-from {config.init_from}", tokenizer_sha256(checkpoint), model.config.vocab_size
            )
            return model
        tokenizer = data.tokenizer
        special = {
            "bos_token_id": tokenizer["bos_id"],
            "eos_token_id": tokenizer["eos_id"],
            "pad_token_id": tokenizer["pad_id"],
        }
        model_config = preset(config.preset or "tiny", vocab_size=tokenizer["vocab_size"], **special).replace(
            **config.model
        )
        data.check_tokenizer("the model (model.vocab_size)", None, model_config.vocab_size)
        torch.manual_seed(config.seed)
        return Decoder(model_config)

    def identity(self) -> dict:
        """The data by what it holds, not where it lies: a moved or copied run still matches."""
        replay = self.batches.replay
        return {
            "preset": self.config.preset or (None if self.config.init_from else "tiny"),
            "data": self.batches.main.dataset.fingerprint,
            "eval_data": {name: dataset.fingerprint for name, dataset in self.eval_sets.items()},
            "replay_data": None if replay is None else replay.dataset.fingerprint,
            "init_from": _absolute(self.config.init_from),
        }

    def record(self) -> dict:
        config = to_dict(self.config)
        for key in ("data", "replay_data", "init_from"):
            config[key] = _absolute(config[key])
        config["eval_data"] = {name: _absolute(path) for name, path in config["eval_data"].items()}
        return {"config": config}

    def count(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def loss(self, model: torch.nn.Module, batch: dict, step: int, rng: torch.Generator) -> Loss:
        total, last, out = model_loss(model, batch, self.config, step, rng)
        if not out.router:
            return Loss(total, {"loss": last})
        self._routers.append(out.router)
        self._aux += out.aux_loss.item() / self.config.grad_accum
        return Loss(total, {"loss": last}, self.model.config.router_aux_loss_coef * out.aux_loss)

    def evaluate(self, model: torch.nn.Module) -> dict[str, dict] | None:
        if not self.eval_sets:
            return None
        size, batches = self.config.batch_size, self.config.eval_batches
        return {name: perplexity(model, packed_batches(data, size, batches)) for name, data in self.eval_sets.items()}

    def step_metrics(self) -> dict[str, float]:
        """Expert use over the step: per routed layer the share of assignments per expert (its
        minimum and maximum), and the mean share of experts each token reaches."""
        if not self._routers:
            return {}
        routers, aux = self._routers, self._aux
        self._routers, self._aux = [], 0.0
        shares, activation = [], []
        for layer in range(len(routers[0])):
            seen = [r[layer] for r in routers if r[layer] is not None]  # None: every sample skipped it
            if not seen:
                continue
            counts = sum(s.assignments for s in seen)
            shares.append((counts / counts.sum()).tolist())
            activation.append(sum(float(s.activation) for s in seen) / len(seen))
        return {
            "aux_loss": aux,
            "expert_share_min": min((min(s) for s in shares), default=0.0),
            "expert_share_max": max((max(s) for s in shares), default=0.0),
            "expert_activation": sum(activation) / max(len(shares), 1),
        }


def pretrain(config: PretrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the run described by ``config``; returns the final metrics."""
    config.require_paths()
    with distributed(config.device) as env:
        return fit(Pretraining(config, env), config, env, progress)
