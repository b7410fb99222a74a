"""Routed feed-forward layers: sparse MoE (Qwen2-MoE / Mixtral routing) and multi-head MoE.

MoE: router Linear(d, E) → softmax in fp32 → top-k → optional renormalisation of the k
weights; each expert is a SwiGLU; an optional shared expert is added, gated by
sigmoid(Linear(d, 1)) (Qwen2-MoE). Expert weights are stored stacked, (E, 2I, d) and (E, d, I),
as transformers 5 stores them.

MH-MoE (arXiv 2404.15045): x → Linear(d, d) → h sub-tokens of d/h → each routed top-k like
MoE to experts of width d/h → merged back → Linear(d, d). Each token thereby reaches up to
h·k experts; the layer reports that share of experts (the paper's "expert activation").

Every routed layer returns a :class:`RouterStats` from which the decoder forms the
load-balancing loss (Switch): E · Σ_e f_e · P_e, f_e = the share of routed assignments that go
to expert e, P_e = the mean router probability of e, pooled over all routed layers as
transformers does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctlab.model.config import ModelConfig
from ctlab.model.layers import SwiGLU


@dataclass
class RouterStats:
    """One routed layer's routing of one batch.

    assignments: (E,) float, how many (sub-)tokens were sent to each expert (all k slots)
    probability_sum: (E,) float, the router probabilities summed over (sub-)tokens
    routed: number of (sub-)tokens routed
    activation: mean share of the experts that each token reaches (k/E for MoE)
    """

    assignments: torch.Tensor
    probability_sum: torch.Tensor
    routed: int
    activation: torch.Tensor


def load_balancing_loss(stats: list[RouterStats], num_experts: int) -> torch.Tensor:
    """E · Σ_e (assignments_e / routed) · (probability_e / routed), pooled over layers."""
    routed = sum(s.routed for s in stats)
    assignments = torch.stack([s.assignments for s in stats]).sum(0) / routed
    probability = torch.stack([s.probability_sum for s in stats]).sum(0) / routed
    return num_experts * torch.sum(assignments * probability)


class Experts(nn.Module):
    """E SwiGLU experts with stacked weights: x (N, d) with top-k indices/weights (N, k) → (N, d)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, init_std: float):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        nn.init.normal_(self.gate_up_proj, std=init_std)
        nn.init.normal_(self.down_proj, std=init_std)

    def expert_weights(self, dtype: torch.dtype) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]:
        """Each expert's (2I, d) and (d, I) weights, by expert index."""
        # one view per expert from a single unbind: backward stacks the experts' gradients once
        # (indexing each expert would build and fill a full-size zero gradient per expert)
        return self.gate_up_proj.unbind(0), self.down_proj.unbind(0)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        flat_expert = indices.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        counts = torch.bincount(flat_expert, minlength=self.gate_up_proj.shape[0]).tolist()
        token = order // indices.shape[1]
        slot_weight = weights.reshape(-1)[order]
        gate_up_proj, down_proj = self.expert_weights(x.dtype)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = token[start : start + count]
            gate, up = F.linear(x[rows], gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, down_proj[expert])
            out.index_add_(0, rows, (y * slot_weight[start : start + count, None]).to(out.dtype))
            start += count
        return out


def route(
    router: nn.Linear, x: torch.Tensor, k: int, renormalise: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router probabilities (N, E) fp32, top-k weights (N, k) and indices (N, k) for x (N, d)."""
    probabilities = F.softmax(router(x), dim=-1, dtype=torch.float32)
    weights, indices = torch.topk(probabilities, k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probabilities, weights.to(x.dtype), indices


def _stats(probabilities: torch.Tensor, indices: torch.Tensor, per_token: int) -> RouterStats:
    """``per_token``: routed rows per token (1 for MoE, h for MH-MoE)."""
    num_experts = probabilities.shape[-1]
    with torch.no_grad():
        hits = F.one_hot(indices, num_experts).sum(dim=1)  # (N, E) assignments per routed row
        reached = hits.view(-1, per_token, num_experts).sum(dim=1) > 0  # (tokens, E)
        activation = reached.float().mean()
    return RouterStats(hits.sum(0).float(), probabilities.sum(0), probabilities.shape[0], activation)


class SparseMoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.k, self.renormalise = config.experts_per_token, config.norm_topk_prob
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Experts(config.num_experts, config.hidden_size, config.expert_intermediate_size, config.init_std)
        self.shared_expert = None
        if config.shared_expert_intermediate_size > 0:
            self.shared_expert = SwiGLU(config.hidden_size, config.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """x (B, T, d) → (B, T, d) and the routing statistics."""
        flat = x.reshape(-1, x.shape[-1])
        probabilities, weights, indices = route(self.router, flat, self.k, self.renormalise)
        out = self.experts(flat, indices, weights)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view_as(x), _stats(probabilities, indices, 1)


class MultiHeadMoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads, self.k, self.renormalise = config.mh_heads, config.experts_per_token, config.norm_topk_prob
        sub = config.hidden_size // config.mh_heads
        self.multi_head_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.router = nn.Linear(sub, config.num_experts, bias=False)
        self.experts = Experts(config.num_experts, sub, config.expert_intermediate_size, config.init_std)
        self.merge_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """x (B, T, d) → (B, T, d): (B·T·h, d/h) sub-tokens routed, merged, projected."""
        sub_tokens = self.multi_head_proj(x).reshape(-1, x.shape[-1] // self.heads)
        probabilities, weights, indices = route(self.router, sub_tokens, self.k, self.renormalise)
        merged = self.experts(sub_tokens, indices, weights).view_as(x)
        return self.merge_proj(merged), _stats(probabilities, indices, self.heads)
