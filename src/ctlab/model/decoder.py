"""The ctlab decoder: embeddings → layers → shared final norm → LM head.

The layers, the final norm and the head are public (``layers``, ``norm``, ``lm_head``,
``exit_logits``) so that early exit, layer dropout, cache compression and speculative decoding
work on the model as it is. ``forward`` can skip layers per sample (``skip``: LayerSkip's
layer dropout) and return every layer's output (``output_hidden_states``: early-exit losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctlab.errors import UserError
from ctlab.model.config import ModelConfig
from ctlab.model.layers import Attention, KVCache, RMSNorm, SwiGLU, document_mask, rotary_tables
from ctlab.model.moe import MultiHeadMoE, RouterStats, SparseMoE, load_balancing_loss


@dataclass
class DecoderOutput:
    """logits: (B, T, V); hidden_states: the input embeddings and every layer's output, each
    (B, T, d), when asked for; aux_loss: the load-balancing loss (0 for a dense model);
    router: each routed layer's statistics, None for one that every sample skipped."""

    logits: torch.Tensor
    hidden_states: list[torch.Tensor] | None
    aux_loss: torch.Tensor
    router: list[RouterStats | None]


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config, index)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if not config.is_sparse(index):
            self.ffn: nn.Module = SwiGLU(config.hidden_size, config.intermediate_size)
        elif config.ffn == "moe":
            self.ffn = SparseMoE(config)
        else:
            self.ffn = MultiHeadMoE(config)

    def forward(self, x, rotary, mask, cache) -> tuple[torch.Tensor, RouterStats | None]:
        """x (B, T, d) → (B, T, d) and the routing statistics of a routed layer."""
        x = x + self.attention(self.input_norm(x), rotary, mask, cache)
        out = self.ffn(self.ffn_norm(x))
        if isinstance(out, tuple):
            return x + out[0], out[1]
        return x + out, None


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) from any layer's output (B, T, d) through the shared norm and head."""
        return self.lm_head(self.norm(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        skip: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """input_ids (B, T); position_ids (B, T), restarting at 0 at each document of a packed row
        (default: 0..T-1 after the cache); skip (num_layers, B) bool: samples that bypass a layer
        (training only: not with a cache)."""
        if skip is not None and cache is not None:
            raise ValueError("layer skipping is for training: it cannot be combined with a KV cache")
        past = 0 if cache is None else len(cache)
        if past + input_ids.shape[1] > self.config.max_position_embeddings:
            raise UserError(
                f"an input of {past + input_ids.shape[1]:,} positions is longer than the model's context "
                f"of {self.config.max_position_embeddings:,} (max_position_embeddings)"
            )
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.embed_tokens(input_ids)
        rotary = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask = document_mask(position_ids, past)
        hidden = [x] if output_hidden_states else None
        router: list[RouterStats | None] = []
        for i, layer in enumerate(self.layers):
            if skip is None or not skip[i].any():
                x, stats = layer(x, rotary, mask, cache)
            else:  # only the samples that keep this layer go through it (and count in its routing)
                keep = ~skip[i]
                stats = None
                if keep.any():
                    kept_mask = None if mask is None else mask[keep]
                    y, stats = layer(x[keep], (rotary[0][keep], rotary[1][keep]), kept_mask, None)
                    x = x.clone()
                    x[keep] = y
            if self.config.is_sparse(i):
                router.append(stats)
            if hidden is not None:
                hidden.append(x)
        logits = self.exit_logits(x)
        routed = [s for s in router if s is not None]
        aux = load_balancing_loss(routed, self.config.num_experts) if routed else logits.new_zeros(())
        return DecoderOutput(logits, hidden, aux, router)

    def num_parameters(self, active: bool = False) -> int:
        """All parameters (a tied head counted once), or those a token uses (``active``: routed
        experts counted k of E)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        for module in self.modules():
            if isinstance(module, SparseMoE | MultiHeadMoE):
                experts = sum(p.numel() for p in module.experts.parameters())
                # per token: k experts, for each of MH-MoE's h sub-tokens (each 1/h of the width)
                share = min(module.k * getattr(module, "heads", 1), self.config.num_experts)
                total -= experts - experts * share // self.config.num_experts
        return total
