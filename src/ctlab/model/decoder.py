"""The ctlab decoder: embeddings → layers → shared final norm → LM head.

The layers, the final norm and the head are public (``layers``, ``norm``, ``lm_head``,
``exit_logits``, ``exit_after``) so that early exit, layer dropout, cache compression and
speculative decoding work on the model as it is. ``run_layers`` runs any range of layers, on a
:class:`~ctlab.model.cache.KVCache` or without one; ``forward`` makes logits only where asked,
can skip layers per sample (``skip``: LayerSkip's layer dropout) and return every layer's
output (``output_hidden_states``: early-exit losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctlab.errors import UserError
from ctlab.model.cache import KVCache
from ctlab.model.config import ModelConfig
from ctlab.model.layers import Attention, RMSNorm, RotaryTables, SwiGLU, document_mask
from ctlab.model.moe import MultiHeadMoE, RouterStats, SparseMoE, load_balancing_loss


@dataclass
class LayersOutput:
    """hidden: the last layer's output (B, T, d); hidden_states: the input and every layer's
    output when asked for; router: each routed layer's statistics (None where all skipped)."""

    hidden: torch.Tensor
    hidden_states: list[torch.Tensor] | None
    router: list[RouterStats | None]


@dataclass
class DecoderOutput:
    """logits: (B, T, V), or (B, K, V) for K asked positions; hidden_states: the input
    embeddings and every layer's output, each (B, T, d), when asked for; aux_loss: the
    load-balancing loss (0 for a dense model); router: each routed layer's statistics, None
    for one that every sample skipped."""

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

    def forward(self, x, rotary, mask, cache=None, positions=None) -> tuple[torch.Tensor, RouterStats | None]:
        """x (B, T, d) → (B, T, d) and the routing statistics of a routed layer."""
        x = x + self.attention(self.input_norm(x), rotary, mask, cache, positions)
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
        self.rotary = RotaryTables(config.head_dim, config.rope_theta, config.max_position_embeddings)
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
        logits_index: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids (B, T) through every layer. position_ids (B, T): without a cache they restart
        at 0 at each document of a packed row (default 0..T-1); with one, the positions of the
        new tokens (default: each row's next). skip (num_layers, B) bool: samples that bypass a
        layer (training only: not with a cache). logits_index (B, K): the positions among the T
        whose logits are made (default all; the last one is enough at prefill)."""
        run = self.run_layers(self.embed_tokens(input_ids), position_ids, cache, 0, None, skip, output_hidden_states)
        hidden = run.hidden
        if logits_index is not None:
            hidden = hidden.gather(1, logits_index[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.exit_logits(hidden)
        routed = [s for s in run.router if s is not None]
        aux = load_balancing_loss(routed, self.config.num_experts) if routed else logits.new_zeros(())
        return DecoderOutput(logits, run.hidden_states, aux, run.router)

    def run_layers(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        stop: int | None = None,
        skip: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> LayersOutput:
        """x (B, T, d) — the embeddings, or layer ``start - 1``'s output — through layers
        [start, stop) (default to the last). LayerSkip drafts with layers [0, E) and verifies
        from E on the same cache; :meth:`exit_logits` turns any layer's output into logits."""
        stop = len(self.layers) if stop is None else stop
        if skip is not None and cache is not None:
            raise ValueError("layer skipping is for training: it cannot be combined with a KV cache")
        position_ids = self.input_positions(x, position_ids, cache, start)
        rotary = self.rotary(position_ids, x.dtype)
        mask = document_mask(position_ids) if cache is None else None
        hidden = [x] if output_hidden_states else None
        router: list[RouterStats | None] = []
        for i in range(start, stop):
            layer = self.layers[i]
            if skip is None or not skip[i].any():
                x, stats = layer(x, rotary, mask, cache, position_ids)
            else:  # only the samples that keep this layer go through it (and count in its routing)
                keep = ~skip[i]
                stats = None
                if keep.any():
                    kept_mask = None if mask is None else mask[keep]
                    y, stats = layer(x[keep], (rotary[0][keep], rotary[1][keep]), kept_mask)
                    x = x.clone()
                    x[keep] = y
            if self.config.is_sparse(i):
                router.append(stats)
            if hidden is not None:
                hidden.append(x)
        return LayersOutput(x, hidden, router)

    def exit_after(
        self, x: torch.Tensor, cache: KVCache | None = None, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d) through layers [start, stop) (:meth:`run_layers`) and the shared exit: the
        last layer's output (B, T, d) and the logits (B, T, V) it gives. LayerSkip drafts with
        [0, E) and verifies with [E, L)."""
        hidden = self.run_layers(x, cache=cache, start=start, stop=stop).hidden
        return hidden, self.exit_logits(hidden)

    def input_positions(
        self, x: torch.Tensor, position_ids: torch.Tensor | None, cache: KVCache | None, start: int
    ) -> torch.Tensor:
        """The position ids (B, T) of ``x`` (B, T, d) entering layer ``start``: as given, else each
        row's next on ``cache``, else 0..T-1; a :class:`UserError` past the model's context."""
        length = x.shape[1]
        last = length  # the positions a forward reaches (explicit positions with a cache: the caller's check)
        if cache is not None and position_ids is None:
            position_ids = cache.next_positions(length, start)
            last = int(cache.end[start].max(initial=0)) + length
        if last > self.config.max_position_embeddings:
            raise UserError(
                f"an input of {last:,} positions is longer than the model's context "
                f"of {self.config.max_position_embeddings:,} (max_position_embeddings)"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device).expand(x.shape[0], length)
        return position_ids

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
