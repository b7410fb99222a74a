"""The pretraining config: one dataclass, read from YAML, overridable from the command line, and
saved resolved into every run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctlab.fields import reject_unknown

RUNTIME_FIELDS = ("device", "parallel", "compile")


@dataclass
class LayerSkipConfig:
    """LayerSkip (arXiv 2404.16710): layer dropout and early-exit loss.

    p_max: dropout rate of the last layer (0: off); per layer D(l) = e^{l·ln2/(L−1)} − 1;
    per step S(t) = e^{t·ln2/(T−1)} − 1 when ``scale_by_step`` (pretraining from scratch), else 1.
    early_exit: "none", "rotational" (layer l active when l mod R = t mod R) or "gradual" (layers
    switch on from the last backwards, one every ``curriculum_steps`` / (L − 1) steps, all on at
    ``curriculum_steps``); the last layer is always active. e_scale: the early layers' loss scale
    (see :mod:`ctlab.train.layerskip`; 0 puts all weight on the last layer).
    """

    p_max: float = 0.0
    scale_by_step: bool = True
    early_exit: str = "none"
    e_scale: float = 1.0
    rotation: int = 2
    curriculum_steps: int = 0  # gradual: steps until every layer is on (default: all training steps)


@dataclass
class TrainConfig:
    data: str = ""  # packed folder (`ctlab data pack`)
    out: str = ""  # run folder
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    init_from: str | None = None  # continual pretraining: a checkpoint folder to start from
    steps: int = 200
    batch_size: int = 8  # sequences per micro-batch per rank
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr · this
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "fp32"  # fp32 or bf16 (autocast)
    device: str = "auto"  # auto (a GPU when there is one), cuda or cpu
    parallel: str = "ddp"  # under torchrun: ddp (replicated) or fsdp (fully sharded)
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_data: dict = field(default_factory=dict)  # name → packed folder, e.g. {zh: ..., en: ...}
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_every: int = 0  # also keep every N-th step's checkpoint for good (0: only the latest)
    replay_data: str | None = None  # continual: packed folder of the old data
    replay_ratio: float = 0.0  # share of each batch drawn from replay_data
    layerskip: LayerSkipConfig = field(default_factory=LayerSkipConfig)

    def __post_init__(self) -> None:
        if isinstance(self.layerskip, dict):
            reject_unknown(LayerSkipConfig, self.layerskip, "layerskip")
            self.layerskip = LayerSkipConfig(**self.layerskip)

    def validate(self) -> None:
        problems = []
        for section in (self, self.layerskip):
            for f in dataclasses.fields(section):
                value, kind = getattr(section, f.name), str(f.type)
                if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, int | float)):
                    problems.append(f"{f.name} must be a number, not {value!r}")
                elif kind == "bool" and not isinstance(value, bool):
                    problems.append(f"{f.name} must be true or false, not {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if not self.data:
            problems.append("data (a packed folder) is required")
        if not self.out:
            problems.append("out (a run folder) is required")
        if problems:
            raise ValueError("; ".join(problems))
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.dtype not in ("fp32", "bf16"):
            problems.append("dtype must be fp32 or bf16")
        if self.device not in ("auto", "cuda", "cpu"):
            problems.append("device must be auto, cuda or cpu")
        if self.parallel not in ("ddp", "fsdp"):
            problems.append("parallel must be ddp or fsdp")
        elif self.parallel == "fsdp" and self.layerskip.p_max > 0:
            # a layer that every sample of one rank skips would leave that rank out of the
            # layer's parameter gathering and gradient reduction while the others take part
            problems.append("layerskip.p_max > 0 needs parallel: ddp (FSDP shards must be gathered on every rank)")
        if not 0 <= self.replay_ratio < 1:
            problems.append("replay_ratio must be in [0, 1)")
        elif self.replay_ratio > 0:
            rows = round(self.batch_size * self.replay_ratio)
            if not self.replay_data:
                problems.append("replay_ratio needs replay_data")
            if not 1 <= rows < self.batch_size:
                problems.append(f"replay_ratio {self.replay_ratio} gives {rows} of {self.batch_size} rows per batch")
        for name in ("warmup_steps", "keep_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be at least 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append("min_lr_ratio must be in [0, 1]")
        if self.grad_clip <= 0 or self.eval_batches < 1 or self.lr <= 0:
            problems.append("grad_clip and lr must be positive, eval_batches at least 1")
        if self.layerskip.rotation < 1 or self.layerskip.curriculum_steps < 0 or self.layerskip.e_scale < 0:
            problems.append("layerskip: rotation must be at least 1, curriculum_steps and e_scale at least 0")
        if not isinstance(self.model, dict) or not isinstance(self.eval_data, dict):
            problems.append("model and eval_data are mappings (field: value, name: packed folder)")
        if not 0 <= self.layerskip.p_max < 1:
            problems.append("layerskip.p_max must be in [0, 1)")
        if self.layerskip.early_exit not in ("none", "rotational", "gradual"):
            problems.append("layerskip.early_exit must be none, rotational or gradual")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that decide what a run computes: a run resumes only under the same identity,
        but may resume on another device, parallelism or compilation setting."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        reject_unknown(cls, data, "training config")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a mapping of fields")
        return cls.from_dict(data)


def apply_override(config: TrainConfig, assignment: str) -> None:
    """``key=value`` (YAML value) onto ``config``; ``model.x``, ``layerskip.x`` and
    ``eval_data.x`` reach inside."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"bad override {assignment!r}: expected KEY=VALUE")
    value = yaml.safe_load(raw)
    head, _, rest = key.partition(".")
    if rest:
        if head in ("model", "eval_data"):
            getattr(config, head)[rest] = value
            return
        if head == "layerskip":
            reject_unknown(LayerSkipConfig, [rest], "layerskip")
            setattr(config.layerskip, rest, value)
            return
        raise ValueError(f"unknown config section {head!r}")
    reject_unknown(TrainConfig, [key], "training config")
    setattr(config, key, value)
