"""What every alignment objective starts from: the model to train, its tokenizer, and examples.

The model comes from a run folder (its latest checkpoint), a checkpoint or an HF checkpoint;
its tokenizer (and chat template) must be in the same folder, since fine-tuned checkpoints
must carry the tokenizer they were trained with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ctlab.align.encode import ChatEncoder
from ctlab.config import to_dict
from ctlab.errors import UserError
from ctlab.model.config import ModelConfig
from ctlab.model.decoder import Decoder, DecoderOutput
from ctlab.model.hf import load_model
from ctlab.runs import file_digest, latest_checkpoint

DEFAULT_ROW = 512  # tokens per packed row unless asked


class StartingPoint:
    """checkpoint: the resolved folder; encoder: its tokenizer's chat encoder; pad_id."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.checkpoint = latest_checkpoint(path)
        if not (self.checkpoint / "tokenizer.json").is_file():
            raise UserError(f"{path} has no tokenizer (tokenizer.json): fine-tuning needs the model's tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.checkpoint))
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: its tokenizer does not load ({str(err).splitlines()[0]})") from None
        self.encoder = ChatEncoder(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def model(self) -> Decoder:
        model = load_model(self.checkpoint)
        if len(self.encoder.tokenizer) > model.config.vocab_size:
            raise UserError(
                f"{self.checkpoint}: its tokenizer has {len(self.encoder.tokenizer):,} tokens, more than the "
                f"model's vocabulary of {model.config.vocab_size:,}"
            )
        return model

    @staticmethod
    def row_length(seq_len: int | None, model: Decoder) -> int:
        """``seq_len``, or 512 tokens (fewer for a shorter context); refused beyond the context."""
        context = model.config.max_position_embeddings
        if seq_len is None:
            return min(DEFAULT_ROW, context)
        if seq_len > context:
            raise UserError(f"seq_len {seq_len:,} is longer than the model's context of {context:,}")
        return seq_len

    @property
    def tokenizer_dir(self) -> str:
        return str(self.checkpoint)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def model_digest(checkpoint: Path) -> str:
    """What a checkpoint holds: the digests of its config and weights."""
    files = [checkpoint / "config.json", *sorted(checkpoint.glob("*.safetensors"))]
    return ",".join(file_digest(path) for path in files)


def data_identity(config, start: StartingPoint) -> dict:
    """What an alignment run's identity is made of besides its settings: the starting model
    and the data by what they hold (a run folder that gained a checkpoint is another start)."""
    return {
        "model": model_digest(start.checkpoint),
        "data": file_digest(config.data),
        "eval_data": None if config.eval_data is None else file_digest(config.eval_data),
    }


def resolved(config) -> dict:
    """The config as run.json keeps it, its paths absolute."""
    data = to_dict(config)
    for key in ("model", "data", "eval_data"):
        data[key] = _absolute(data[key])
    return data


def note(line: str) -> None:
    """A line for the user about the data (what was read, what was left out and why)."""
    print(line, file=sys.stderr)


def moe_regulariser(config: ModelConfig, out: DecoderOutput) -> torch.Tensor | None:
    """The load-balancing term of a routed model's output (None for a dense model)."""
    return config.router_aux_loss_coef * out.aux_loss if out.router else None
