"""``ctlab eval sde``: how well a model answers a built-in task in one sample design.

The held-out split of the task is asked in the design's prompt (greedy replies through the
engine, so any KV policy or quantisation can be evaluated); each reply is read back with the
design's parser and scored: accuracy (every aspect exactly right), per-aspect accuracy and the
parse rate, with a few replies kept to look at.
"""

from __future__ import annotations

from ctlab.align.sde import Design, parse, prompt, score
from ctlab.align.tasks import Task
from ctlab.eval.generation import chat_replies
from ctlab.infer.sampling import SamplingParams


def evaluate_design(
    engine, text_model, task: Task, design: Design, limit: int, max_new_tokens: int = 96, progress: bool = True
) -> dict:
    design.check(task)
    records = task.records("test")[:limit]
    conversations = [[{"role": "user", "content": prompt(task, r, design)}] for r in records]
    replies = chat_replies(engine, text_model, conversations, SamplingParams(max_new_tokens=max_new_tokens), progress)
    result = score(task, records, replies.texts, design)
    examples = [
        {"prompt": c[0]["content"], "reply": reply, "parsed": parse(task, reply, design), "gold": r.answer}
        for c, reply, r in list(zip(conversations, replies.texts, records, strict=True))[:5]
    ]
    return {"task": task.name, "design": design.name(), **result, "too_long": replies.too_long, "examples": examples}


def table_row(result: dict) -> list[str]:
    aspects = ", ".join(f"{name} {value:.1%}" for name, value in result["aspects"].items())
    figures = [f"{result[key]:.1%}" for key in ("parse_rate", "accuracy", "majority_accuracy")]
    return [result["design"], str(result["records"]), *figures, aspects]


TABLE_HEADER = ["design", "records", "parse rate", "accuracy", "most common answer", "per aspect"]
