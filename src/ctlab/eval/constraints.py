"""``ctlab eval constraints``: IFEval-style accuracy of a model on multi-constraint prompts.

Each prompt of the file is answered greedily through the engine and checked by its
constraints' verifiers: prompt-level and instruction-level accuracy, strict and loose, and the
pass rates per constraint kind (:func:`ctlab.align.instructions.score_replies`).
"""

from __future__ import annotations

from ctlab.align.instructions import score_replies
from ctlab.eval.generation import chat_replies
from ctlab.infer.sampling import SamplingParams
from ctlab.report.tables import text_table


def evaluate_constraints(engine, text_model, items: list, max_new_tokens: int = 160, progress: bool = True) -> dict:
    conversations = [[{"role": "user", "content": prompt}] for prompt, _ in items]
    replies = chat_replies(engine, text_model, conversations, SamplingParams(max_new_tokens=max_new_tokens), progress)
    result = score_replies(items, replies.texts)
    result["too_long"] = replies.too_long
    result["examples"] = [{"prompt": p, "reply": r} for (p, _), r in list(zip(items, replies.texts, strict=True))[:5]]
    return result


def tables(result: dict) -> str:
    levels = [["level", "strict", "loose"]]
    for level in ("prompt", "instruction"):
        levels.append([level, f"{result[f'{level}_strict']:.1%}", f"{result[f'{level}_loose']:.1%}"])
    kinds = [["kind", "count", "strict", "loose"]]
    for kind, entry in result["kinds"].items():
        kinds.append([kind, str(entry["count"]), f"{entry['strict']:.1%}", f"{entry['loose']:.1%}"])
    return f"{text_table(levels)}\n\n{text_table(kinds)}"
