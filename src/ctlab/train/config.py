"""Training configs: the settings of the shared loop, and those of each objective on top.

Each is a :func:`ctlab.config.config` dataclass read from YAML, overridable with
``--set KEY=VALUE``, and saved resolved into the run folder's ``run.json``. A run resumes
only under the same *identity* (every field but those in ``RUNTIME_FIELDS`` and ``out``), so
it may continue on another device, under another parallelism, compiled, or logging and saving
at another pace, but not with other settings; a copied run folder resumes where it was copied to.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from ctlab.config import ConfigError, Fraction, config, parse, put, read_yaml, set_key, to_dict

# how a run is executed and recorded, not what it computes: a run may resume with other values
RUNTIME_FIELDS = ("device", "parallel", "compile", "log_every", "eval_every", "checkpoint_every", "keep_every")


@config
class LoopConfig:
    """What :func:`ctlab.train.loop.fit` needs, whatever the objective."""

    out: str = ""  # run folder
    steps: PositiveInt = 200
    grad_accum: PositiveInt = 1  # micro-batches per step
    lr: PositiveFloat = 1e-3
    min_lr_ratio: Fraction = 0.1  # cosine decays to lr · this
    warmup_steps: NonNegativeInt = 20
    weight_decay: NonNegativeFloat = 0.1
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    grad_clip: PositiveFloat = 1.0
    dtype: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: a GPU when there is one
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicated or fully sharded
    compile: bool = False
    seed: NonNegativeInt = 0
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 100
    keep_every: NonNegativeInt = 0  # also keep every N-th step's checkpoint for good (0: only the latest)

    def identity(self) -> dict:
        """The fields that decide what a run computes (see the module docstring)."""
        return {k: v for k, v in to_dict(self).items() if k not in (*RUNTIME_FIELDS, "out")}

    @classmethod
    def load(cls, path: str | Path | None = None, flags: dict | None = None, sets: list[str] = ()) -> Self:
        """The config of ``path`` (YAML; none: the defaults), then ``flags`` (dotted keys, typed
        values), then ``sets`` (``KEY=VALUE``, values read as YAML), validated together."""
        data = read_yaml(path, "training config") if path else {}
        for key, value in (flags or {}).items():
            put(data, key, value)
        for assignment in sets:
            set_key(data, assignment)
        return parse(cls, data, "training config")

    def require(self, *fields: tuple[str, str]) -> None:
        """A :class:`ConfigError` naming the (field, description) pairs left empty."""
        missing = [f"{name} ({what})" for name, what in fields if not getattr(self, name)]
        if missing:
            listed = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
            raise ConfigError(listed + (" is" if len(missing) == 1 else " are") + " required")


@config
class LayerSkipConfig:
    """LayerSkip (arXiv 2404.16710): layer dropout and early-exit loss.

    p_max: dropout rate of the last layer (0: off); per layer D(l) = e^{l·ln2/(L−1)} − 1;
    per step S(t) = e^{t·ln2/(T−1)} − 1 when ``scale_by_step`` (pretraining from scratch), else 1.
    early_exit: "none", "rotational" (layer l active when l mod R = t mod R) or "gradual" (layers
    switch on from the last backwards, one every ``curriculum_steps`` / (L − 1) steps, all on at
    ``curriculum_steps``); the last layer is always active. e_scale: the early layers' loss scale
    (see :mod:`ctlab.train.layerskip`; 0 puts all weight on the last layer).
    """

    p_max: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scale_by_step: bool = True
    early_exit: Literal["none", "rotational", "gradual"] = "none"
    e_scale: NonNegativeFloat = 1.0
    rotation: PositiveInt = 2
    curriculum_steps: NonNegativeInt = 0  # gradual: steps until every layer is on (default: all training steps)


@config
class PretrainConfig(LoopConfig):
    """``ctlab train pretrain``: a model from a preset (or a checkpoint) on packed data."""

    data: str = ""  # packed folder (`ctlab data pack`)
    preset: str | None = None  # model preset (default: tiny); not with init_from
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    init_from: str | None = None  # continual pretraining: a checkpoint or run folder to start from
    batch_size: PositiveInt = 8  # sequences per micro-batch per rank
    eval_data: dict[str, str] = field(default_factory=dict)  # name → packed folder, e.g. {zh: ..., en: ...}
    eval_batches: PositiveInt = 8
    replay_data: str | None = None  # continual: packed folder of the old data
    replay_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0  # share of each batch drawn from replay_data
    layerskip: LayerSkipConfig = field(default_factory=LayerSkipConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        problems = []
        if self.parallel == "fsdp" and self.layerskip.p_max > 0:
            # a layer that every sample of one rank skips would leave that rank out of the
            # layer's parameter gathering and gradient reduction while the others take part
            problems.append("layerskip.p_max > 0 needs parallel: ddp (FSDP shards must be gathered on every rank)")
        if self.replay_data and not self.replay_ratio:
            problems.append("replay_data needs replay_ratio above 0 (the share of each batch drawn from it)")
        if self.replay_ratio > 0:
            rows = round(self.batch_size * self.replay_ratio)
            if not self.replay_data:
                problems.append("replay_ratio needs replay_data")
            if not 1 <= rows < self.batch_size:
                problems.append(f"replay_ratio {self.replay_ratio} gives {rows} of {self.batch_size} rows per batch")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def require_paths(self) -> None:
        """The settings a run cannot start without."""
        self.require(("data", "a packed folder"), ("out", "a run folder"))
