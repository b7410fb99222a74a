"""The chat and preference records a user brings, read from JSONL with every bad line counted.

Two shapes, the usual ones:

- a conversation: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
  with at least one assistant turn (multi-turn welcome);
- a preference: ``{"prompt": ..., "chosen": ..., "rejected": ...}``, each a string or a list
  of messages; a string prompt is one user turn, a string answer one assistant turn.

A line that is not such a record is left out and counted under the reason (``not JSON``,
``no assistant turn``, ...), with the first line number of each reason, so nothing is lost
silently; a file without one usable record is a :class:`~ctlab.errors.UserError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ctlab.errors import UserError

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict]


@dataclass
class Preference:
    """prompt: the turns before the answer (ending with a user turn); chosen, rejected: the
    answers, each one or more assistant turns."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]


class Malformed(ValueError):
    """A record left out; the message is its reason (the counted kind)."""


@dataclass
class Records:
    """What a file gave: the usable records, and per reason the lines left out (count, first line)."""

    path: str
    items: list = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line number of each item
    left_out: dict[str, list[int]] = field(default_factory=dict)  # reason → [count, first line number]

    def leave_out(self, reason: str, line: int) -> None:
        entry = self.left_out.setdefault(reason, [0, line])
        entry[0] += 1

    def convert(self, function) -> list:
        """``function`` of every item; an item it refuses (:class:`Malformed`) is left out and
        counted under the reason with its line (so the summary tells it)."""
        kept, lines = [], []
        for item, line in zip(self.items, self.lines, strict=True):
            try:
                kept.append(function(item))
                lines.append(line)
            except Malformed as err:
                self.leave_out(str(err), line)
        self.lines = lines
        return kept

    def summary(self, what: str) -> str:
        """``read 120 conversations from F; left out 3: 2 not JSON (first at line 5), ...``"""
        line = f"read {len(self.items):,} {what} from {self.path}"
        if not self.left_out:
            return line
        dropped = sum(count for count, _ in self.left_out.values())
        reasons = ", ".join(
            f"{count} {reason} (first at line {first})" for reason, (count, first) in self.left_out.items()
        )
        return f"{line}; left out {dropped:,}: {reasons}"


def _messages(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Malformed(f"{what} not a non-empty list of messages")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise Malformed(f"{what} message without string content")
        if message.get("role") not in ROLES:
            raise Malformed(f"{what} message with an unknown role")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def conversation(record) -> Conversation:
    """A :class:`Conversation` from one decoded JSON line, or :class:`Malformed`."""
    if not isinstance(record, dict):
        raise Malformed("not an object")
    if "messages" not in record:
        raise Malformed("no messages")
    messages = _messages(record["messages"], "messages:")
    if not any(m["role"] == "assistant" for m in messages):
        raise Malformed("no assistant turn")
    return Conversation(messages)


def _answer(value, what: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    turns = _messages(value, f"{what}:")
    if any(m["role"] != "assistant" for m in turns):
        raise Malformed(f"{what} holds a turn that is not the assistant's")
    return turns


def preference(record) -> Preference:
    """A :class:`Preference` from one decoded JSON line, or :class:`Malformed`."""
    if not isinstance(record, dict):
        raise Malformed("not an object")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in record]
    if missing:
        raise Malformed(f"no {missing[0]}")
    prompt = record["prompt"]
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt:")
    if prompt[-1]["role"] != "user":
        raise Malformed("prompt not ending with a user turn")
    chosen, rejected = _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected")
    if chosen == rejected:
        raise Malformed("chosen equal to rejected")
    return Preference(prompt, chosen, rejected)


def read_records(path: str | Path, parse, what: str) -> Records:
    """Every line of the JSONL file ``path`` through ``parse`` (:func:`conversation` or
    :func:`preference`); a :class:`UserError` when the file is missing or gives nothing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = Records(str(path))
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.items.append(parse(json.loads(line)))
                    records.lines.append(number)
                except json.JSONDecodeError:
                    records.leave_out("not JSON", number)
                except Malformed as err:
                    records.leave_out(str(err), number)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not records.items:
        raise UserError(records.summary(what).replace("read 0", "no usable", 1))
    return records
