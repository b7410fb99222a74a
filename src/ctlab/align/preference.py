"""``ctlab train dpo``: preference training (DPO, IPO, TDPO1/2, SimPO, + SFT) on the shared loop.

Each micro-batch is ``batch_size`` pairs; their 2·B sequences (prompt + chosen, prompt +
rejected) are packed best-fit into as few rows as hold them (:mod:`ctlab.align.packing`), so
one forward scores every response with no padding to the longest, and per-sequence log-probs
are segment sums. The reference model is used one of two ways:

- its log-probs of every pair are computed once before the first step, and it is freed (the
  default when no loss needs more; a laptop then holds one model while it trains, and loads
  the reference again only for the held-out evaluation, which reports its KL);
- it stays in memory beside the policy when a loss reads its full next-token distributions
  (TDPO's sequential KL), or when asked (``reference: model``).

Logged per step (means over pairs): ``loss`` and each weighted part (``loss/<name>``),
``rewards/{chosen,rejected,margins,accuracies}`` (reward β·log π/π_ref, as trl logs it),
``logps/{chosen,rejected}``, and with the reference at hand ``kl/{chosen,rejected}``, the
sequential KL of each response. The held-out pairs get the same, the KL always included.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ctlab.align.config import PreferenceConfig
from ctlab.align.encode import Encoded
from ctlab.align.losses import LOSSES, LossSettings, PairScores, segment_sums, token_kl, token_logps
from ctlab.align.packing import PackedExamples
from ctlab.align.records import preference, read_records
from ctlab.align.sft import RowBatches
from ctlab.align.start import StartingPoint, data_identity, moe_regulariser, note, resolved
from ctlab.errors import UserError
from ctlab.model.decoder import Decoder
from ctlab.report.plots import preference_curves
from ctlab.tokens.loader import PackedLoader, collate
from ctlab.tokens.packed import IGNORE_INDEX
from ctlab.train.distributed import Distributed, distributed
from ctlab.train.loop import Loss, Objective, fit


class PairSet:
    """Encoded preference pairs that fit in a row; :meth:`batch` packs any of them."""

    def __init__(self, path: str, start: StartingPoint, seq_len: int, announce: bool):
        records = read_records(path, preference, "preference pairs")
        pairs = records.convert(start.encoder.preference)
        fits = [len(c.ids) + len(r.ids) <= seq_len for c, r in pairs]
        self.pairs: list[tuple[Encoded, Encoded]] = [p for p, ok in zip(pairs, fits, strict=True) if ok]
        self.seq_len, self.pad_id, self.folder = seq_len, start.pad_id, path
        if not self.pairs:
            raise UserError(f"{path}: no pair fits in seq_len {seq_len:,} (prompt + chosen + prompt + rejected)")
        if announce:
            note(records.summary("preference pairs"))
            if len(self.pairs) < len(pairs):
                note(
                    f"{path}: left out {len(pairs) - len(self.pairs):,} pairs longer than seq_len {seq_len:,} together"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Pairs ``indices`` packed into rows: ``input_ids``, ``labels``, ``position_ids``,
        ``segments`` (R, L) — pair j's chosen is segment 2j, its rejected 2j + 1 — and
        ``pairs`` (B,), their indices."""
        packed = PackedExamples([list(self.pairs[i]) for i in indices], self.seq_len, self.pad_id, self.folder)
        return collate([packed[row] for row in range(len(packed))]) | {"pairs": torch.tensor(indices)}


class PairBatches(RowBatches):
    """The loader's stream of pair indices, each micro-batch's pairs packed into rows."""

    def __init__(self, pairs: PairSet, loader: PackedLoader):
        super().__init__(loader)
        self.pairs = pairs

    def next(self) -> dict[str, torch.Tensor]:
        return self.pairs.batch(self.loader.next_indices())


def sequence_scores(logits: torch.Tensor, batch: dict, ref_logits: torch.Tensor | None = None):
    """Per sequence (2B,): summed log-probs of the responses, their token counts and, given the
    reference's logits, their sequential KL against the reference (else None)."""
    count = 2 * len(batch["pairs"])
    labels, segments = batch["labels"], batch["segments"]
    logps = segment_sums(token_logps(logits, labels), segments, count)
    tokens = segment_sums((labels != IGNORE_INDEX).float(), segments, count)
    kl = None
    if ref_logits is not None:
        per_token = token_kl(logits, ref_logits).masked_fill(labels == IGNORE_INDEX, 0.0)
        kl = segment_sums(per_token, segments, count)
    return logps, tokens, kl


class PreferenceTraining(Objective):
    kind = "preference"
    title = "Preference loss"
    unit = "weighted loss per pair"

    def __init__(self, config: PreferenceConfig, env: Distributed):
        self.config, self.env = config, env
        self.settings = LossSettings(config.beta, config.alpha, config.label_smoothing, config.gamma)
        self.losses = {name: weight for name, weight in config.losses.items() if weight}
        kinds = [LOSSES[name] for name in self.losses]
        self.needs_reference = any(k.reference for k in kinds)
        self.keep_reference = any(k.distribution for k in kinds) or config.reference == "model"
        start = self.start = StartingPoint(config.model)
        self.model = start.model()
        seq_len = start.row_length(config.seq_len, self.model)
        self.train_pairs = PairSet(config.data, start, seq_len, env.main)
        self.eval_pairs = None if config.eval_data is None else PairSet(config.eval_data, start, seq_len, env.main)
        loader = PackedLoader(self.train_pairs, config.batch_size, config.seed, env.rank, env.world_size)
        self.batches = PairBatches(self.train_pairs, loader)
        self.frozen = {"reference": start.model()} if self.keep_reference else {}
        self.tokenizer_dir = start.tokenizer_dir
        self.reference_logps: torch.Tensor | None = None  # (P, 2) once computed

    def identity(self) -> dict:
        return data_identity(self.config, self.start)

    def record(self) -> dict:
        return {"config": resolved(self.config), "pairs": len(self.train_pairs)}

    def count(self, batch: dict) -> int:
        return len(batch["pairs"])

    def finish(self, records: list[dict]) -> None:
        name = " + ".join(f"{weight:g}·{loss}" if weight != 1 else loss for loss, weight in self.losses.items())
        preference_curves(records, Path(self.config.out) / "preference.png", f"Preference training: {name}")

    # ------------------------------------------------------------------ the reference

    def _autocast(self):
        device = self.env.device
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.config.dtype == "bf16" else nullcontext()

    def _reference(self) -> Decoder:
        """The kept reference model, or a fresh copy of the starting model (to be freed)."""
        if "reference" in self.frozen:
            return self.frozen["reference"]
        return self.start.model().to(self.env.device).eval().requires_grad_(False)

    @torch.no_grad()
    def prepare(self) -> None:
        """Score every training pair with the reference once, then free it (unless it is kept)."""
        if self.keep_reference or not self.needs_reference or self.reference_logps is not None:
            return
        reference, table = self._reference(), []
        indices = list(range(len(self.train_pairs)))
        size = 2 * self.config.batch_size
        for first in range(0, len(indices), size):
            batch = self._on(self.train_pairs.batch(indices[first : first + size]))
            with self._autocast():
                logits = reference(batch["input_ids"], batch["position_ids"]).logits
            table.append(sequence_scores(logits, batch)[0].view(-1, 2).cpu())
        self.reference_logps = torch.cat(table)

    def _precomputed(self, pairs: torch.Tensor) -> torch.Tensor:
        """(B, 2) reference log-probs of the chosen and rejected answers of ``pairs``."""
        return self.reference_logps[pairs.cpu()].to(self.env.device)

    def _on(self, batch: dict) -> dict:
        return {k: v.to(self.env.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ scoring

    def _scores(self, model, batch: dict, reference: Decoder | None) -> tuple[PairScores, object]:
        out = model(batch["input_ids"], batch["position_ids"])
        ref_logits = None
        if reference is not None:
            with torch.no_grad():
                ref_logits = reference(batch["input_ids"], batch["position_ids"]).logits
        logps, tokens, kl = sequence_scores(out.logits, batch, ref_logits)
        if ref_logits is not None:
            ref = sequence_scores(ref_logits, batch)[0].view(-1, 2)
        elif self.needs_reference:
            ref = self._precomputed(batch["pairs"])
        else:
            ref = None
        scores = PairScores(
            chosen=logps[0::2],
            rejected=logps[1::2],
            ref_chosen=None if ref is None else ref[:, 0],
            ref_rejected=None if ref is None else ref[:, 1],
            chosen_tokens=tokens[0::2],
            rejected_tokens=tokens[1::2],
            chosen_kl=None if kl is None else kl[0::2],
            rejected_kl=None if kl is None else kl[1::2],
        )
        return scores, out

    def _terms(self, scores: PairScores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss summed over pairs, and the logged sums."""
        total = torch.zeros((), device=scores.chosen.device)
        logged: dict[str, torch.Tensor] = {}
        for name, weight in self.losses.items():
            part = LOSSES[name].function(scores, self.settings).sum()
            total = total + weight * part
            logged[f"loss/{name}"] = part.detach()
        logged["loss"] = total.detach()
        logged["logps/chosen"] = scores.chosen.detach().sum()
        logged["logps/rejected"] = scores.rejected.detach().sum()
        if scores.ref_chosen is not None:
            chosen = self.settings.beta * (scores.chosen - scores.ref_chosen).detach()
            rejected = self.settings.beta * (scores.rejected - scores.ref_rejected).detach()
            logged["rewards/chosen"] = chosen.sum()
            logged["rewards/rejected"] = rejected.sum()
            logged["rewards/margins"] = (chosen - rejected).sum()
            logged["rewards/accuracies"] = (chosen > rejected).float().sum()
        if scores.chosen_kl is not None:
            logged["kl/chosen"] = scores.chosen_kl.detach().sum()
            logged["kl/rejected"] = scores.rejected_kl.detach().sum()
        return total, logged

    def loss(self, model: torch.nn.Module, batch: dict, step: int, rng: torch.Generator) -> Loss:
        scores, out = self._scores(model, batch, self.frozen.get("reference"))
        total, logged = self._terms(scores)
        return Loss(total, logged, moe_regulariser(self.model.config, out))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, dict] | None:
        if self.eval_pairs is None:
            return None
        reference = self._reference()
        sums: dict[str, float] = {}
        pairs = min(len(self.eval_pairs), self.config.batch_size * self.config.eval_batches)
        for first in range(0, pairs, self.config.batch_size):
            batch = self._on(self.eval_pairs.batch(list(range(first, min(first + self.config.batch_size, pairs)))))
            with self._autocast():
                scores, _ = self._scores(model, batch, reference)
            for name, value in self._terms(scores)[1].items():
                sums[name] = sums.get(name, 0.0) + float(value)
        return {"heldout": {name: value / pairs for name, value in sums.items()} | {"pairs": pairs}}


def train_preference(config: PreferenceConfig, progress: bool = True) -> dict:
    """Train (or resume) the preference run ``config`` describes; returns the final metrics."""
    config.require_paths()
    with distributed(config.device) as env:
        return fit(PreferenceTraining(config, env), config, env, progress)
