"""``ctlab train pretrain``: the pretraining loop, on one process or data-parallel under torchrun
(DDP, or FSDP's fully sharded parameters, gradients and optimiser state with ``parallel: fsdp``).

Each optimiser step takes ``grad_accum`` micro-batches of ``batch_size`` packed sequences per
rank. The loss is the token-level cross-entropy summed over the whole global batch and divided
by its number of predicted tokens, so a step is the same whether the global batch is split
over micro-batches, ranks or neither (gradient-accumulation and data-parallel invariance).
AdamW, linear warmup then cosine decay to ``lr · min_lr_ratio``, gradient clipping, fp32 or
bf16 autocast, optional ``torch.compile``; LayerSkip's layer dropout and early-exit loss;
continual pretraining from a checkpoint with replay of the old data.

A run folder holds ``config.json`` (resolved), ``metrics.jsonl``, ``loss.png``, and
``checkpoints/step-N/`` (see :mod:`ctlab.train.checkpoint`); the same command resumes a killed
run from its last complete checkpoint and continues exactly as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ctlab.atomic import atomic_write, write_json
from ctlab.model.config import ModelConfig, preset
from ctlab.model.decoder import Decoder
from ctlab.model.hf import load_pretrained
from ctlab.report.plots import read_metrics
from ctlab.tokenizer.train import file_digest
from ctlab.tokens.loader import PackedLoader, collate
from ctlab.tokens.packed import IGNORE_INDEX, PackedDataset
from ctlab.tokens.store import StoreError
from ctlab.train import layerskip
from ctlab.train.checkpoint import (
    checkpoint_dir,
    completed_checkpoints,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from ctlab.train.config import TrainConfig


class RunConflict(ValueError):
    """The run folder holds a run with another config."""


class DeviceUnavailable(ValueError):
    """The config asks for a device this machine does not have."""


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # the process group was started here (and is ended at the run's end)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value


def setup_distributed(device: str = "auto") -> Distributed:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without it.
    ``device``: "cuda" (this process's GPU, NCCL between processes), "cpu" (gloo) or "auto" (the
    GPU when there is one)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise DeviceUnavailable("device cuda was asked for, but torch sees no GPU on this machine")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"process {local_rank} of this machine has no GPU of its own ({torch.cuda.device_count()} found): "
            "start at most that many processes per machine, or train with --device cpu"
        )
    placed = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(placed)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world_size, placed, owns_group)


def parallelise(model: Decoder, config: TrainConfig, env: Distributed) -> torch.nn.Module:
    """The module the training steps call: ``model`` itself on one process, else DDP around it,
    or ``model`` sharded in place by FSDP (each decoder layer a unit, the embedding, final norm and
    head in the root unit; ``exit_logits`` gathers like ``forward``)."""
    if env.world_size == 1:
        return model
    for tensor in model.state_dict().values():  # every rank starts from rank 0's weights
        dist.broadcast(tensor, src=0)
    if config.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        register_fsdp_forward_method(model, "exit_logits")
        return model
    from torch.nn.parallel import DistributedDataParallel

    # a layer every sample of a rank skips (layer dropout) gets no gradient on that rank
    return DistributedDataParallel(model, find_unused_parameters=config.layerskip.p_max > 0)


def parallel_mode(trained: torch.nn.Module) -> str:
    """How the steps are parallelised: "fsdp", "ddp" or "none"."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(trained, FSDPModule):
        return "fsdp"
    return "ddp" if isinstance(trained, DistributedDataParallel) else "none"


def gradient_sync(trained: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Whether this micro-batch's backward reduces gradients across ranks (only the last of a step
    needs to: the earlier ones accumulate locally)."""
    if hasattr(trained, "set_requires_gradient_sync"):  # FSDP
        trained.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if not sync and hasattr(trained, "no_sync"):  # DDP
        return trained.no_sync()
    return contextlib.nullcontext()


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``lr · min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_model(config: TrainConfig, tokens_manifest: dict) -> Decoder:
    if config.init_from:
        model = load_pretrained(config.init_from)
        if model.config.vocab_size < tokens_manifest["tokenizer"]["vocab_size"]:
            raise ValueError(f"{config.init_from} has a smaller vocabulary than the tokenizer of {config.data}")
        return model
    tokenizer = tokens_manifest["tokenizer"]
    model_config: ModelConfig = preset(
        config.preset,
        vocab_size=tokenizer["vocab_size"],
        bos_token_id=tokenizer["bos_id"],
        eos_token_id=tokenizer["eos_id"],
        pad_token_id=tokenizer["pad_id"],
    )
    model_config = model_config.replace(**config.model)
    torch.manual_seed(config.seed)
    return Decoder(model_config)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim < 2 else decay).append(parameter)  # biases and norm weights
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


class BatchSource:
    """This rank's micro-batches: from the main data, with ``replay_ratio`` of each batch's rows
    drawn from the replay data (continual pretraining)."""

    def __init__(self, config: TrainConfig, env: Distributed):
        self.replay_rows = round(config.batch_size * config.replay_ratio) if config.replay_data else 0
        main_rows = config.batch_size - self.replay_rows
        self.main = PackedLoader(config.data, main_rows, config.seed, env.rank, env.world_size)
        self.replay = None
        if self.replay_rows:
            self.replay = PackedLoader(config.replay_data, self.replay_rows, config.seed, env.rank, env.world_size)
            if self.replay.dataset.seq_len != self.main.dataset.seq_len:
                raise ValueError("replay_data and data are packed to different sequence lengths")

    def next(self) -> dict[str, torch.Tensor]:
        samples = [self.main.dataset[i] for i in self.main.next_indices()]
        if self.replay is not None:
            samples += [self.replay.dataset[i] for i in self.replay.next_indices()]
        return collate(samples)

    def state(self) -> dict:
        return {
            "main": self.main.position,
            "replay": None if self.replay is None else self.replay.position,
            "global_batch_size": self.main.global_batch_size,
        }

    def restore(self, state: dict) -> None:
        if state.get("global_batch_size", self.main.global_batch_size) != self.main.global_batch_size:
            raise RunConflict(
                f"the run was trained with {state['global_batch_size']} sequences per step from the main data, "
                f"not {self.main.global_batch_size}: resume with the same batch size and number of processes"
            )
        self.main.position = state["main"]
        if self.replay is not None:
            self.replay.position = state["replay"]


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (fp32) of logits (B, T, V) against labels (B, T), ignoring IGNORE_INDEX."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def model_loss(
    model, batch: dict, config: TrainConfig, step: int, draw: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Summed LM loss (with LayerSkip's early exits when on), the summed last-layer CE, the output.
    ``draw``: the generator of this micro-batch's layer dropout."""
    inner = model.module if hasattr(model, "module") else model
    num_layers = inner.config.num_layers
    rates = layerskip.dropout_rates(config.layerskip, num_layers, step, config.steps)
    skip = layerskip.sample_skips(rates, batch["input_ids"].shape[0], draw)
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


@torch.no_grad()
def evaluate(model: Decoder, folder: str, batches: int, batch_size: int) -> dict:
    """Perplexity of ``model`` on the first ``batches`` batches of a packed folder (unshuffled order)."""
    dataset = PackedDataset(folder)
    total, count = 0.0, 0
    for start in range(0, min(len(dataset), batches * batch_size), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = _to(batch, next(model.parameters()).device)
        out = model(batch["input_ids"], batch["position_ids"])
        total += token_losses(out.logits, batch["labels"]).item()
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "tokens": count}


def _claim_run(config: TrainConfig, env: Distributed) -> None:
    out = Path(config.out)
    saved = out / "config.json"
    if env.main:
        if saved.is_file():
            try:
                same = TrainConfig.from_dict(json.loads(saved.read_text())).identity() == config.identity()
            except (ValueError, TypeError):  # a config.json of another ctlab version or hand-edited
                same = False
            if not same:
                raise RunConflict(f"{out} holds a run with another config: choose another --out")
        else:
            if out.exists() and any(out.iterdir()):
                raise RunConflict(f"{out} is not empty and not a training run: choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            write_json(saved, config.to_dict())
    if env.world_size > 1:
        dist.barrier()


def _resume_point(config: TrainConfig, env: Distributed) -> Path | None:
    """The checkpoint to resume from, chosen by rank 0 (which writes them) for every rank; None
    for a fresh run. Only rank 0 reads it (the others get its contents through the group), so
    other machines need not see the run folder."""
    found = [None]
    if env.main and (checkpoints := completed_checkpoints(config.out)):
        found = [checkpoints[-1][0]]
    if env.world_size > 1:
        dist.broadcast_object_list(found, src=0)
    return None if found[0] is None else checkpoint_dir(config.out, found[0])


def pretrain(config: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the run described by ``config``; returns the final metrics."""
    config.validate()
    env = setup_distributed(config.device)
    try:
        return _pretrain(config, env, progress)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _pretrain(config: TrainConfig, env: Distributed, progress: bool) -> dict:
    source = BatchSource(config, env)  # a bad --data is refused before the run folder is touched
    tokens_manifest = source.main.dataset.store.manifest
    tokenizer_json = Path(tokens_manifest["tokenizer"]["path"])
    if not tokenizer_json.is_file() or file_digest(tokenizer_json) != tokens_manifest["tokenizer"]["sha256"]:
        raise StoreError(f"{tokenizer_json} is not the tokenizer {config.data} was tokenised with")
    _claim_run(config, env)
    model = build_model(config, tokens_manifest)
    resume = _resume_point(config, env)
    if resume is not None and env.main:
        load_weights(resume, model)
    model.to(env.device)
    trained = parallelise(model, config, env)
    optimizer = _optimizer(model, config)  # after FSDP has sharded the parameters
    step, tokens_seen = 0, 0
    if resume is not None:
        state = load_training_state(resume if env.main else None, model, optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        source.restore(state["data"])
        if env.main:
            _truncate_metrics(Path(config.out) / "metrics.jsonl", step)
    forward = torch.compile(trained) if config.compile else trained
    metrics_path = Path(config.out) / "metrics.jsonl"
    tokenizer_dir = str(Path(tokens_manifest["tokenizer"]["path"]).parent)
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")

    def log(record: dict) -> None:
        if env.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    if step == 0 and config.eval_data:
        log(
            {
                "step": 0,
                "eval": {
                    name: evaluate(model, path, config.eval_batches, config.batch_size)
                    for name, path in config.eval_data.items()
                },
            }
        )
    bar = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step", disable=not (progress and env.main))
    window_start, window_tokens = time.perf_counter(), 0
    last: dict = {}
    while step < config.steps:
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [_to(source.next(), env.device) for _ in range(config.grad_accum)]
        predicted = env.sum(
            torch.tensor(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro), dtype=torch.float64)
        )
        scale = env.world_size / predicted.item()  # DDP and FSDP average gradients over ranks: undo it
        loss_sum, aux_sum, routers = torch.zeros((), dtype=torch.float64), 0.0, []
        for i, batch in enumerate(micro):
            context = gradient_sync(trained, sync=i == len(micro) - 1)
            # layer dropout draws from (seed, step, rank, micro-batch): distinct per rank, the same on resume
            draw = torch.Generator().manual_seed(hash((config.seed, step, env.rank, i)) & (2**63 - 1))
            with context, autocast:
                loss, last_ce, out = model_loss(forward, batch, config, step, draw)
                objective = loss * scale
                if out.router:
                    objective = objective + model.config.router_aux_loss_coef * out.aux_loss / len(micro)
                    aux_sum += out.aux_loss.item() / len(micro)
                    routers.append(out.router)
            objective.backward()
            loss_sum += last_ce.double()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_tokens = int(env.sum(torch.tensor(sum(b["input_ids"].numel() for b in micro))).item())
        tokens_seen += step_tokens
        window_tokens += step_tokens
        train_loss = env.sum(loss_sum).item() / predicted.item()
        last = {"step": step, "loss": train_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_seen}
        if routers:
            last.update(_router_metrics(routers, aux_sum))
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            last["tokens_per_s"] = window_tokens / elapsed if elapsed > 0 else 0.0
            log(last)
            window_start, window_tokens = time.perf_counter(), 0
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
        if config.eval_data and (step % config.eval_every == 0 or step == config.steps):
            model.eval()
            evals = {
                name: evaluate(model, path, config.eval_batches, config.batch_size)
                for name, path in config.eval_data.items()
            }
            model.train()
            log({"step": step, "tokens": tokens_seen, "eval": evals})
            last["eval"] = evals
        if step % config.checkpoint_every == 0 or step == config.steps:
            state = {
                "tokens_seen": tokens_seen,
                "data": source.state(),
                "processes": env.world_size,
                "parallel": parallel_mode(trained),
            }
            save_checkpoint(config.out, step, model, optimizer, state, tokenizer_dir, config.keep_every)
            if env.world_size > 1:
                dist.barrier()
        bar.update(1)
    bar.close()
    if env.main:
        from ctlab.report.plots import loss_curve

        loss_curve(metrics_path, Path(config.out) / "loss.png")
    return last or last_metrics(metrics_path)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step``: the steps after the checkpoint are about to be redone."""
    kept = [json.dumps(r) + "\n" for r in read_metrics(path) if r["step"] <= step]
    atomic_write(path, lambda f: f.write("".join(kept).encode()))


def last_metrics(path: Path) -> dict:
    """The last training record of a metrics.jsonl, with the last evaluation folded in."""
    last: dict = {}
    for record in read_metrics(path):
        if "loss" in record:
            last = {**record, "eval": last.get("eval", {})}
        elif "eval" in record:
            last["eval"] = record["eval"]
    return last


def initial_eval(path: Path) -> dict:
    """The held-out results at step 0 (before any training step: for continual pretraining, the
    starting checkpoint's), or {} when the run has none."""
    return next((r["eval"] for r in read_metrics(path) if r["step"] == 0 and "eval" in r), {})


def _router_metrics(routers: list, aux: float) -> dict:
    """Expert utilisation over the step: per routed layer the share of assignments per expert
    (its minimum and maximum), and the mean share of experts each token reaches."""
    shares, activation = [], []
    for layer in range(len(routers[0])):
        seen = [r[layer] for r in routers if r[layer] is not None]  # None: every sample skipped it
        if not seen:
            continue
        counts = sum(s.assignments for s in seen)
        shares.append((counts / counts.sum()).tolist())
        activation.append(sum(float(s.activation) for s in seen) / len(seen))
    layers = max(len(shares), 1)
    return {
        "aux_loss": aux,
        "expert_share_min": min((min(s) for s in shares), default=0.0),
        "expert_share_max": max((max(s) for s in shares), default=0.0),
        "expert_activation": sum(activation) / layers,
    }
