"""The training loop every objective shares: :func:`fit`.

An objective (pretraining, fine-tuning, preference training...) says what is trained and how
a batch is scored; the loop does everything else, the same way for all of them:

- each step takes ``grad_accum`` micro-batches per process. The objective's loss is a *sum*
  over the ``count(batch)`` items it scores (predicted tokens, pairs, sequences) and the loop
  divides it by their number in the whole global batch, so a step is the same whether the
  global batch is split over micro-batches, processes or neither;
- AdamW (no weight decay on biases and norm weights), linear warmup then cosine decay to
  ``lr · min_lr_ratio``, gradient clipping, fp32 or bf16 autocast, optional ``torch.compile``,
  DDP or FSDP under torchrun (:mod:`ctlab.train.distributed`);
- the run folder (:mod:`ctlab.runs`): claimed for the objective's identity, ``metrics.jsonl``,
  ``loss.png``, a checkpoint every ``checkpoint_every`` steps (:mod:`ctlab.train.checkpoint`);
  the same command resumes a killed run from its last complete checkpoint and continues
  exactly as if it had not stopped;
- held-out evaluation before the first step, every ``eval_every`` steps and at the end.

Random draws inside a loss (LayerSkip's layer dropout, say) come from the generator the loop
passes in, seeded from (seed, step, rank, micro-batch): distinct per process, the same on
resume, so there is no RNG state to checkpoint.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ctlab.model.hf import copy_tokenizer, tokenizer_files
from ctlab.report.plots import loss_curve
from ctlab.runs import METRICS_FILE, Metrics, checkpoint_dir, checkpoints, claim
from ctlab.train.checkpoint import load_training_state, load_weights, save_checkpoint
from ctlab.train.config import LoopConfig
from ctlab.train.distributed import Distributed, gradient_sync, parallel_mode, parallelise


@dataclass
class Loss:
    """One micro-batch's loss.

    total: the objective to minimise, summed over the batch's ``count`` items;
    logged: sums over the same items, logged as means over the global batch (``loss`` at least);
    regulariser: a term already averaged over the micro-batch (MoE load balancing), added with
        weight 1 / grad_accum and logged by the objective itself.
    """

    total: torch.Tensor
    logged: dict[str, torch.Tensor]
    regulariser: torch.Tensor | None = None


class Batches(ABC):
    """This process's micro-batches, resumable: dicts of tensors holding at least ``input_ids``."""

    @abstractmethod
    def next(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def state(self) -> dict:
        """Where the stream stands (saved with each checkpoint)."""

    @abstractmethod
    def restore(self, state: dict) -> None:
        """Continue from a saved :meth:`state`; a :class:`ctlab.errors.UserError` if it cannot."""


class Objective(ABC):
    """What :func:`fit` trains and how: a model, its batches and its loss.

    ``model`` is the trained model (unwrapped; ``layers`` are FSDP's units), ``frozen`` the
    models it reads but does not train (a reference model), ``batches`` its data.
    """

    kind: str  # the run folder's kind, e.g. "pretrain"
    title: str = "Training loss"  # the loss curve's title
    unit: str = "cross-entropy (nats/token)"  # what its loss measures
    model: torch.nn.Module
    batches: Batches
    frozen: dict[str, torch.nn.Module] = {}
    tokenizer_dir: str | None = None  # copied into the run folder and every checkpoint
    unused_parameters: bool = False  # a step may leave parameters without a gradient (DDP must know)

    def identity(self) -> dict:
        """What the objective adds to a run's identity (data fingerprints, say)."""
        return {}

    def record(self) -> dict:
        """What the run folder's run.json keeps besides the identity (the resolved config)."""
        return {}

    @abstractmethod
    def count(self, batch: dict) -> int:
        """How many items the loss of ``batch`` sums over."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict, step: int, rng: torch.Generator) -> Loss:
        """The loss of one micro-batch; ``model`` is the wrapped (DDP, FSDP, compiled) module."""

    def prepare(self) -> None:  # noqa: B027 (optional: most objectives need nothing)
        """Work before the first step, once the models are on their device (reference scores)."""

    def finish(self, records: list[dict]) -> None:  # noqa: B027
        """Work after the last step, on the first process: plots of the run's ``records``."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, dict] | None:
        """Held-out results by set name (None: the objective has no held-out sets)."""
        return None

    def step_metrics(self) -> dict[str, float]:
        """Metrics this process gathered over the step's losses, then forgotten (e.g. expert use)."""
        return {}


def learning_rate(config: LoopConfig, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` to ``lr · min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def micro_batch_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """The generator of one micro-batch's random draws (a stable derivation, not Python's hash)."""
    state = np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def _optimizer(model: torch.nn.Module, config: LoopConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)  # biases and norm weights
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _evaluate(objective: Objective, model: torch.nn.Module) -> dict | None:
    model.eval()
    try:
        return objective.evaluate(model)
    finally:
        model.train()


def _start(objective: Objective, config: LoopConfig, env: Distributed) -> Path | None:
    """Claim the run folder (rank 0) and find the checkpoint to resume from (None: a fresh run),
    chosen by rank 0 for every rank. Only rank 0 reads the folder (the others get its contents
    through the process group), so other machines need not see it."""
    run = Path(config.out)
    resume = None
    if env.main:
        # what a start writes before any step: a folder holding only these took no step worth resuming
        setup = [METRICS_FILE, "loss.png", *(path.name for path in tokenizer_files(objective.tokenizer_dir))]
        identity = {**config.identity(), **objective.identity()}
        claim(run, objective.kind, identity, record=objective.record(), setup=setup)
        copy_tokenizer(objective.tokenizer_dir, run)
        found = checkpoints(run)
        resume = found[-1][0] if found else None
        Metrics(run).keep_through(-1 if resume is None else resume)
    step = env.from_main(resume)
    return None if step is None else checkpoint_dir(run, step)


def fit(objective: Objective, config: LoopConfig, env: Distributed, progress: bool = True) -> dict:
    """Train (or resume) ``objective`` in the run folder ``config.out``; returns the last
    step's metrics (with the last evaluation under ``eval``)."""
    resume = _start(objective, config, env)
    model = objective.model
    if resume is not None and env.main:
        load_weights(resume, model)
    model.to(env.device)
    for frozen in objective.frozen.values():
        frozen.to(env.device).eval().requires_grad_(False)
    trained = parallelise(model, config.parallel, env, objective.unused_parameters)
    optimizer = _optimizer(model, config)  # after FSDP has sharded the parameters
    step, tokens_seen = 0, 0
    if resume is not None:
        state = load_training_state(resume if env.main else None, model, optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        objective.batches.restore(state["data"])
    objective.prepare()
    forward = torch.compile(trained) if config.compile else trained
    metrics = Metrics(config.out)
    log = metrics.append if env.main else lambda record: None
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")
    last: dict = {}
    if step == 0 and (evals := _evaluate(objective, model)):
        log({"step": 0, "tokens": 0, "eval": evals})
    bar = tqdm(total=config.steps, initial=step, desc=objective.kind, unit="step", disable=not (progress and env.main))
    window_start, window_tokens = time.perf_counter(), 0
    while step < config.steps:
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [_to(objective.batches.next(), env.device) for _ in range(config.grad_accum)]
        items = env.sum(torch.tensor(sum(objective.count(b) for b in micro), dtype=torch.float64)).item()
        scale = env.world_size / max(items, 1)  # DDP and FSDP average gradients over ranks: undo it
        logged: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            rng = micro_batch_generator(config.seed, step, env.rank, i)
            with gradient_sync(trained, sync=i == len(micro) - 1), autocast:
                loss = objective.loss(forward, batch, step, rng)
                total = loss.total * scale
                if loss.regulariser is not None:
                    total = total + loss.regulariser / len(micro)
            total.backward()
            for name, value in loss.logged.items():
                logged[name] = logged.get(name, 0) + value.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_tokens = int(env.sum(torch.tensor(sum(b["input_ids"].numel() for b in micro))).item())
        tokens_seen += step_tokens
        window_tokens += step_tokens
        means = {name: env.sum(value.cpu()).item() / max(items, 1) for name, value in sorted(logged.items())}
        last = {"step": step, **means, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens_seen}
        last.update(objective.step_metrics())
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            last["tokens_per_s"] = window_tokens / elapsed if elapsed > 0 else 0.0
            log(last)
            window_start, window_tokens = time.perf_counter(), 0
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
        if (step % config.eval_every == 0 or step == config.steps) and (evals := _evaluate(objective, model)):
            log({"step": step, "tokens": tokens_seen, "eval": evals})
            last["eval"] = evals
        if step % config.checkpoint_every == 0 or step == config.steps:
            state = {
                "tokens_seen": tokens_seen,
                "data": objective.batches.state(),
                "processes": env.world_size,
                "parallel": parallel_mode(trained),
            }
            save_checkpoint(config.out, step, model, optimizer, state, objective.tokenizer_dir, config.keep_every)
            env.barrier()
        bar.update(1)
    bar.close()
    if env.main:
        loss_curve(metrics.read(), Path(config.out) / "loss.png", objective.title, objective.unit)
        objective.finish(metrics.read())
    return last or final_metrics(config.out) or {"step": step, "eval": {}}


def final_metrics(run: str | Path) -> dict:
    """The last training record of a run's metrics, with the last evaluation folded in."""
    last: dict = {}
    for record in Metrics(run).read():
        if "loss" in record:
            last = {**record, "eval": last.get("eval", {})}
        elif "eval" in record:
            last["eval"] = record["eval"]
    return last


def summary(run: str | Path, final: dict) -> str:
    """``step N: loss X, NAME ppl A at step 0 -> B, ...``: the closing line of a run."""
    before = next((r["eval"] for r in Metrics(run).read() if r["step"] == 0 and "eval" in r), {})
    line = f"step {final['step']}: " + (f"loss {final['loss']:.4f}" if "loss" in final else "no training step logged")
    for name, result in final.get("eval", {}).items():
        figure = "ppl" if "ppl" in result else "loss"
        start = f"{before[name][figure]:.2f} at step 0 -> " if figure in before.get(name, {}) else ""
        line += f", {name} {figure} {start}{result[figure]:.2f}"
    return line
