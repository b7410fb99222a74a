"""Sample Design Engineering (arXiv 2404.13033): how a fine-tuning sample is written, and reading
the model's answers back.

A :class:`Design` fixes every option the paper studies:

- ``instruction``: the task's instruction ``first`` (before the input), ``last`` or ``none``;
- ``input_loss``: whether the loss also covers the prompt (input modelling);
- ``format`` of a multi-aspect answer: ``natural`` (a sentence), ``lines`` (``aspect：value``
  per line) or ``json``;
- ``unmentioned`` aspects: written with a ``placeholder`` (``无``) or ``omit``\\ ted;
- ``labels`` of a classification: ``text`` (正面) or ``numeric`` (1), the instruction saying
  which number is which;
- ``reasoning``: ``none``, ``cot`` (the evidence first, then the answer) or ``after`` (the
  answer, then its evidence); the evidence is made from the gold labels (for ``entities``, the
  tagged words), so it is true, and tasks without word-level evidence refuse it.

The default is the paper's recommendation (ES-SDE): instruction first, no input modelling,
lines, placeholders, text labels, no reasoning. :func:`parse` reads an answer of any design
back into aspects, tolerant of near-misses (half- or full-width punctuation, spaces, a JSON
object inside other text, separators mixed), and says when it cannot.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Literal

from ctlab.align.tasks import Record, Task
from ctlab.config import config
from ctlab.errors import UserError

PLACEHOLDER = "无"
ANSWER_MARK, REASON_MARK, EVIDENCE_MARK = "答案：", "理由：", "分析："


@config
class Design:
    instruction: Literal["first", "last", "none"] = "first"
    input_loss: bool = False
    format: Literal["natural", "lines", "json"] = "lines"
    unmentioned: Literal["placeholder", "omit"] = "placeholder"
    labels: Literal["text", "numeric"] = "text"
    reasoning: Literal["none", "cot", "after"] = "none"

    def check(self, task: Task) -> None:
        """A :class:`UserError` for an option that does not apply to ``task``."""
        if self.labels == "numeric" and not task.classification:
            raise UserError(f"labels: numeric applies to classification tasks, not {task.name}")
        if self.reasoning != "none" and task.classification:
            raise UserError(f"reasoning needs word-level evidence, which the {task.name} task has not")

    def name(self) -> str:
        """A short name of the options that differ from the default, e.g. ``format=json``."""
        default = Design()
        changed = [f"{k}={getattr(self, k)}" for k in DESIGN_FIELDS if getattr(self, k) != getattr(default, k)]
        return ",".join(changed) or "ES-SDE"


DESIGN_FIELDS = ("instruction", "input_loss", "format", "unmentioned", "labels", "reasoning")


# ------------------------------------------------------------------ writing samples


def _label_value(task: Task, label: str, design: Design) -> str:
    return str(task.labels.index(label) if design.labels == "numeric" else label)


def instruction(task: Task, design: Design) -> str:
    parts = [task.ask + "。"]
    if task.classification and design.labels == "numeric":
        parts.append("，".join(f"{i}表示{label}" for i, label in enumerate(task.labels)) + "。")
    if design.format == "lines" and task.classification:
        parts.append(f"写成“{task.aspects[0]}：类别”。")
    elif design.format == "lines":
        parts.append("每项一行，写成“项目：名称”，多个名称用顿号分开。")
    elif design.format == "json":
        parts.append(f"输出JSON，键为{'、'.join(task.aspects)}。")
    else:
        parts.append("用一句话回答。")
    if not task.classification:
        parts.append(f"没有的项目写“{PLACEHOLDER}”。" if design.unmentioned == "placeholder" else "没有的项目不写。")
    if design.reasoning == "cot":
        parts.append(f"先写{EVIDENCE_MARK.rstrip('：')}，再写{ANSWER_MARK.rstrip('：')}。")
    elif design.reasoning == "after":
        parts.append(f"先写{ANSWER_MARK.rstrip('：')}，再写{REASON_MARK.rstrip('：')}。")
    return "".join(parts)


def prompt(task: Task, record: Record, design: Design) -> str:
    """The user turn: the input with the instruction before it, after it or not at all."""
    if design.instruction == "none":
        return record.text
    if design.instruction == "first":
        return f"{instruction(task, design)}\n{record.text}"
    return f"{record.text}\n{instruction(task, design)}"


def _shown(task: Task, aspect: str, values: tuple[str, ...], design: Design) -> str | None:
    """An aspect's value as written (None: left out)."""
    if task.classification:
        return _label_value(task, values[0], design)
    if values:
        return "、".join(values)
    return PLACEHOLDER if design.unmentioned == "placeholder" else None


def formatted(task: Task, answer: dict[str, tuple[str, ...]], design: Design) -> str:
    """The answer alone, in the design's format."""
    shown = {a: _shown(task, a, answer[a], design) for a in task.aspects}
    shown = {a: v for a, v in shown.items() if v is not None}
    if not shown:
        return "{}" if design.format == "json" else PLACEHOLDER
    if design.format == "lines":
        return "\n".join(f"{a}：{v}" for a, v in shown.items())
    if design.format == "json":
        values = {}
        for aspect, value in shown.items():
            if task.classification:
                values[aspect] = int(value) if design.labels == "numeric" else value
            else:
                values[aspect] = list(answer[aspect]) if answer[aspect] else PLACEHOLDER
        return json.dumps(values, ensure_ascii=False)
    clauses = [f"{a}是{v}" if task.classification or v == PLACEHOLDER else f"{a}有{v}" for a, v in shown.items()]
    return "，".join(clauses) + "。"


def evidence(task: Task, record: Record) -> str:
    found = [f"“{value}”是{aspect}" for aspect in task.aspects for value in record.answer[aspect]]
    return ("句中" + "，".join(found) + "。") if found else "句中没有要找的名称。"


def reply(task: Task, record: Record, design: Design) -> str:
    """The assistant turn: the answer, with the evidence before or after it if asked."""
    answer = formatted(task, record.answer, design)
    if design.reasoning == "cot":
        return f"{EVIDENCE_MARK}{evidence(task, record)}\n{ANSWER_MARK}{answer}"
    if design.reasoning == "after":
        return f"{ANSWER_MARK}{answer}\n{REASON_MARK}{evidence(task, record)}"
    return answer


def sample(task: Task, record: Record, design: Design) -> dict:
    """A conversation record (``ctlab train sft`` reads it)."""
    return {
        "messages": [
            {"role": "user", "content": prompt(task, record, design)},
            {"role": "assistant", "content": reply(task, record, design)},
        ]
    }


# ------------------------------------------------------------------ reading answers back

_WIDTH = str.maketrans({":": "：", ",": "，", ";": "；"})
_AROUND_MARKS = re.compile(r"[ \t]*([：，、；。])[ \t]*")
_SEPARATORS = re.compile(r"[、，；/]")


def _values(text: str) -> tuple[str, ...]:
    text = text.strip().strip("。.、，；").strip("“”\"'")
    if not text or text in (PLACEHOLDER, "没有", "未提及"):
        return ()
    return tuple(dict.fromkeys(v.strip("“”\"' ") for v in _SEPARATORS.split(text) if v.strip("“”\"' ")))


def _answer_part(output: str, design: Design) -> str:
    if design.reasoning == "cot" and ANSWER_MARK in output:
        return output.split(ANSWER_MARK, 1)[1]
    if design.reasoning == "after":
        output = output.split(REASON_MARK, 1)[0]
        return output.split(ANSWER_MARK, 1)[1] if ANSWER_MARK in output else output
    return output


def _parse_json(task: Task, text: str) -> dict | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    found = {}
    for aspect in task.aspects:
        if aspect not in data:
            continue
        value = data[aspect]
        items = value if isinstance(value, list) else [value]
        found[aspect] = tuple(v for item in items if item is not None for v in _values(str(item)))
    return found


def _parse_text(task: Task, text: str) -> dict:
    """Aspects written as ``aspect：value`` (lines) or in a sentence (``aspect有/是value``)."""
    found = {}
    names = "|".join(map(re.escape, task.aspects))
    ends = rf"(?:{names})(?:：|有|是|为)|没有(?:提到)?(?:{names})|[\n。]|$"  # the next aspect, or the end
    for match in re.finditer(rf"({names})(?:：|有|是|为)(.*?)(?={ends})", text):
        found.setdefault(match.group(1), _values(match.group(2)))
    for aspect in task.aspects:
        if aspect not in found and re.search(rf"没有(?:提到)?{re.escape(aspect)}", text):
            found[aspect] = ()
    return found


def parse(task: Task, output: str, design: Design) -> dict[str, tuple[str, ...]] | None:
    """The aspects an answer states, absent ones empty; None when it states none (unparseable)."""
    answer = _answer_part(output, design)
    found = _parse_json(task, answer) if design.format == "json" else None
    text = _AROUND_MARKS.sub(r"\1", answer.translate(_WIDTH)).replace("：\n", "：").strip()
    text = re.sub(r"(?<=\S)[ \t]+(?=\S)", "、", text)  # names listed with spaces between them
    if found == {} and not task.classification:  # a JSON object naming no aspect: nothing mentioned
        return {aspect: () for aspect in task.aspects}
    if found is None:
        found = _parse_text(task, text)
    if not found:
        if text.strip("。") == PLACEHOLDER and not task.classification:
            return {aspect: () for aspect in task.aspects}
        return None
    if task.classification:  # exactly one label, written as the design writes labels
        labels = {str(i): label for i, label in enumerate(task.labels)} if design.labels == "numeric" else {}
        labels |= {label: label for label in task.labels}
        named = {labels.get(v.rstrip("的")) for v in found.get(task.aspects[0], ())}
        return {task.aspects[0]: (named.pop(),)} if len(named) == 1 and None not in named else None
    return {aspect: found.get(aspect, ()) for aspect in task.aspects}


def score(task: Task, records: list[Record], outputs: list[str], design: Design) -> dict:
    """Accuracy (every aspect exactly right), per-aspect accuracy and the parse rate; an
    unparseable answer counts as wrong. ``majority_accuracy`` is the bar to beat: the accuracy
    of always giving the most common gold answer (for ``entities``, "no names at all")."""
    parsed = [parse(task, output, design) for output in outputs]
    right = {aspect: 0 for aspect in task.aspects}
    exact = 0
    for record, answer in zip(records, parsed, strict=True):
        if answer is None:
            continue
        hits = [set(answer[a]) == set(record.answer[a]) for a in task.aspects]
        exact += all(hits)
        for aspect, hit in zip(task.aspects, hits, strict=True):
            right[aspect] += hit
    n = max(len(records), 1)
    answers = Counter(tuple(sorted(r.answer.items())) for r in records)
    return {
        "accuracy": exact / n,
        "majority_accuracy": max(answers.values(), default=0) / n,  # always giving the most common answer
        "parse_rate": sum(p is not None for p in parsed) / n,
        "aspects": {aspect: count / n for aspect, count in right.items()},
        "records": len(records),
    }
