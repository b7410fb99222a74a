"""Preference losses as pure functions of per-response scores, chosen from :data:`LOSSES` by name.

Every loss maps a :class:`PairScores` (one entry per preference pair) to per-pair losses (P,);
the objective sums them, weighted, so ``dpo`` + ``sft`` on the chosen answer is a list of two
names. With u = β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]:

- ``dpo`` (arXiv 2305.18290; trl's ``sigmoid``): −log σ(u); with label smoothing ε
  (conservative DPO) −(1−ε)·log σ(u) − ε·log σ(−u);
- ``ipo`` (arXiv 2310.12036): (Δ − 1/(2β))², Δ the log-ratio difference with each response's
  log-ratio averaged over its tokens, as trl computes it;
- ``tdpo1`` / ``tdpo2`` (arXiv 2404.11999): −log σ(u − β·(KL_l − KL_w)) and
  −log σ(u − α·β·(KL_l − sg(KL_w))), KL the sequential KL of a response (the sum over its
  tokens of KL(π_ref(·|x, y<t) ‖ π(·|x, y<t))), sg a stop-gradient;
- ``simpo`` (arXiv 2405.14734): −log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ), no reference;
- ``sft``: the chosen answer's mean token negative log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ctlab.tokens.packed import IGNORE_INDEX


@dataclass
class PairScores:
    """Per-pair (P,) fp32 tensors: the policy's summed log-probs of the chosen and rejected
    responses, the reference's (None for a reference-free loss), their token counts, and the
    sequential KL of each response against the reference (None unless the reference's full
    distribution was at hand)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    chosen_kl: torch.Tensor | None = None
    rejected_kl: torch.Tensor | None = None

    def margin(self) -> torch.Tensor:
        """(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)), per pair."""
        return (self.chosen - self.ref_chosen) - (self.rejected - self.ref_rejected)


@dataclass(frozen=True)
class LossSettings:
    """beta: β of every loss; alpha: TDPO2's α; label_smoothing: DPO's ε; gamma: SimPO's margin γ."""

    beta: float = 0.1
    alpha: float = 0.5
    label_smoothing: float = 0.0
    gamma: float = 0.5


def dpo(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    u = settings.beta * scores.margin()
    eps = settings.label_smoothing
    return -(1 - eps) * F.logsigmoid(u) - eps * F.logsigmoid(-u)


def ipo(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    chosen = (scores.chosen - scores.ref_chosen) / scores.chosen_tokens.clamp(min=1)
    rejected = (scores.rejected - scores.ref_rejected) / scores.rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1 / (2 * settings.beta)) ** 2


def tdpo1(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    beta = settings.beta
    return -F.logsigmoid(beta * scores.margin() - beta * (scores.rejected_kl - scores.chosen_kl))


def tdpo2(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    beta, alpha = settings.beta, settings.alpha
    return -F.logsigmoid(beta * scores.margin() - alpha * beta * (scores.rejected_kl - scores.chosen_kl.detach()))


def simpo(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    chosen = scores.chosen / scores.chosen_tokens.clamp(min=1)
    rejected = scores.rejected / scores.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(settings.beta * (chosen - rejected) - settings.gamma)


def sft(scores: PairScores, settings: LossSettings) -> torch.Tensor:
    return -scores.chosen / scores.chosen_tokens.clamp(min=1)


@dataclass(frozen=True)
class LossKind:
    """A loss and what it reads: the reference's log-probs, and its full distributions (KL)."""

    function: Callable[[PairScores, LossSettings], torch.Tensor]
    reference: bool
    distribution: bool


LOSSES: dict[str, LossKind] = {
    "dpo": LossKind(dpo, reference=True, distribution=False),
    "ipo": LossKind(ipo, reference=True, distribution=False),
    "tdpo1": LossKind(tdpo1, reference=True, distribution=True),
    "tdpo2": LossKind(tdpo2, reference=True, distribution=True),
    "simpo": LossKind(simpo, reference=False, distribution=False),
    "sft": LossKind(sft, reference=False, distribution=False),
}


def segment_sums(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """Sums (count,) of ``values`` (R, L) over the positions of each segment id in ``segments``
    (R, L; −1: no segment)."""
    kept = segments >= 0
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add_(0, segments[kept], values[kept])


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R, L) fp32 log-probability of each label under ``logits`` (R, L, V); 0 where the label
    is IGNORE_INDEX."""
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return picked.masked_fill(labels == IGNORE_INDEX, 0.0)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """(R, L) KL(π_ref ‖ π) of the next-token distributions at each position, from the policy's
    and the reference's logits (R, L, V), in fp32."""
    logp, ref_logp = torch.log_softmax(logits.float(), dim=-1), torch.log_softmax(ref_logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
