"""Preference pairs from the model itself, judged by the constraint verifiers (arXiv 2404.15846).

Two routes, each pair kept with how many constraints its answers satisfy:

- ``sample``: K sampled answers per prompt; chosen is one that satisfies the most constraints,
  rejected one that satisfies the fewest; a prompt whose answers all tie gives no pair (counted);
- ``correct`` (the paper's discrimination route): an answer that fails a constraint is
  corrected for that one constraint by the constraint's own rewrite; when the correction
  satisfies more constraints, (corrected, original) is a pair. Kinds without a rewrite
  (a minimum length, two different answers, ...) give no correction (counted).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ctlab.align.constraints import Constraint
from ctlab.eval.generation import chat_replies
from ctlab.infer.sampling import SamplingParams


def passed(constraints: list[Constraint], reply: str, prompt: str) -> int:
    return sum(c.check(reply, prompt) for c in constraints)


def corrected(constraints: list[Constraint], reply: str, prompt: str) -> str | None:
    """``reply`` rewritten for its first failed constraint that has a rewrite, when that
    satisfies more constraints than ``reply`` (else None)."""
    before = passed(constraints, reply, prompt)
    for constraint in constraints:
        if constraint.check(reply, prompt):
            continue
        fixed = constraint.fix(reply, prompt)
        if fixed is not None and passed(constraints, fixed, prompt) > before:
            return fixed
    return None


def _pair(prompt: str, chosen: str, rejected: str, route: str, constraints, counts) -> dict:
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "route": route,
        "passed": [counts[0], counts[1]],
        "constraints": len(constraints),
    }


def build_pairs(
    engine,
    text_model,
    items: list[tuple[str, list[Constraint]]],
    samples: int,
    params: SamplingParams,
    routes: tuple[str, ...],
    progress: bool = True,
) -> tuple[list[dict], Counter]:
    """Pairs over ``items`` by ``routes``, and what gave none (``ties``, ``no correction``, no
    answer at all: empty, or a prompt too long for the engine's context)."""
    conversations = [[{"role": "user", "content": prompt}] for prompt, _ in items for _ in range(samples)]
    each = [replace(params, seed=None if params.seed is None else params.seed + i) for i in range(len(conversations))]
    replies = chat_replies(engine, text_model, conversations, each, progress).texts  # "": no room in the context
    pairs, missed = [], Counter()
    for i, (prompt, constraints) in enumerate(items):
        answers = replies[i * samples : (i + 1) * samples]
        if not any(answers):
            missed["no answer (empty, or no room in the context)"] += 1
            continue
        scores = [passed(constraints, a, prompt) for a in answers]
        if "sample" in routes:
            best, worst = scores.index(max(scores)), scores.index(min(scores))
            if scores[best] > scores[worst]:
                pairs.append(
                    _pair(prompt, answers[best], answers[worst], "sample", constraints, (max(scores), min(scores)))
                )
            else:
                missed["ties"] += 1
        if "correct" in routes:
            worst = scores.index(min(scores))
            fixed = corrected(constraints, answers[worst], prompt)
            if fixed is None:
                missed["no correction"] += 1
            else:
                counts = (passed(constraints, fixed, prompt), scores[worst])
                pairs.append(_pair(prompt, fixed, answers[worst], "correct", constraints, counts))
    return pairs, missed
