"""Verifiable constraints on a reply, in Chinese and English (arXiv 2404.15846; IFEval's kinds).

Each constraint is a small class: its instruction in Chinese and English (``text(lang)``), a
``check`` of a reply, and where one exists a ``fix`` that rewrites a failing reply into one
that satisfies it (the paper's discrimination route to preference pairs: a rejected answer and
its correction). Lengths count Chinese the way a reader does: characters (whitespace left
out), sentences ended by 。！？!? and paragraphs separated by blank lines.

``compose`` draws 1–5 constraints that can hold together over a seed instruction; pairs that
cannot (Chinese only and English only, JSON and a bullet list, ...) are refused. ``follows``
gives IFEval's strict and loose verdicts: loose also accepts the reply without its first or
last line, or without markdown emphasis.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=\.)(?!\d)")  # a full stop between digits is a decimal point
HAN = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")
BULLET = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
NUMBERED = re.compile(r"^\s*\d+[.、)]\s*\S", re.MULTILINE)
ASCII_PUNCTUATION = re.compile(r"[,.!?;:]")


def characters(text: str) -> int:
    return len(re.sub(r"\s", "", text))


def sentence_list(text: str) -> list[str]:
    """The sentences of ``text``: ended by 。！？!? or a full stop, the unended tail counted too."""
    pieces = SENTENCE_END.split(text.replace("\n", ""))
    return [p for p in pieces if re.search(r"\w", p)]


def sentences(text: str) -> int:
    return len(sentence_list(text))


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _split_sentences(text: str, n: int) -> list[str] | None:
    """The sentences of ``text`` in ``n`` consecutive groups (None with fewer than n sentences)."""
    found = sentence_list(text)
    if len(found) < n:
        return None
    size = -(-len(found) // n)
    groups = ["".join(found[i : i + size]) for i in range(0, len(found), size)]
    return groups if len(groups) == n else None


CHINESE_NUMBERS = "一二三四五六七八九十"


@dataclass
class Constraint:
    """A verifiable constraint; subclasses define ``kind``, ``zh``/``en`` texts and ``check``."""

    kind: ClassVar[str] = ""
    conflicts: ClassVar[frozenset[str]] = frozenset()  # kinds that cannot hold together with this one
    zh: ClassVar[str] = ""
    en: ClassVar[str] = ""

    def text(self, lang: str = "zh") -> str:
        return (self.zh if lang == "zh" else self.en).format(**asdict(self))

    def check(self, reply: str, prompt: str = "") -> bool:
        raise NotImplementedError

    def fix(self, reply: str, prompt: str = "") -> str | None:
        """A reply that satisfies this constraint made from ``reply`` (None: no fix known)."""
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def required(self) -> set[str]:
        """Strings a reply must contain (so no other constraint may forbid them)."""
        return set()

    def violated_by(self, text: str) -> bool:
        """Whether a reply containing ``text`` breaks this constraint whatever else it holds."""
        return False


@dataclass
class MinCharacters(Constraint):
    n: int = 50
    kind = "min_characters"
    zh = "回答不少于{n}个字。"
    en = "Answer in at least {n} characters."

    def check(self, reply, prompt=""):
        return characters(reply) >= self.n


@dataclass
class MaxCharacters(Constraint):
    n: int = 100
    kind = "max_characters"
    zh = "回答不超过{n}个字。"
    en = "Answer in at most {n} characters."

    def check(self, reply, prompt=""):
        return characters(reply) <= self.n

    def violated_by(self, text):
        return characters(text) > self.n

    def fix(self, reply, prompt=""):
        kept, count = [], 0
        for char in reply:
            count += not char.isspace()
            if count > self.n:
                break
            kept.append(char)
        return "".join(kept)


@dataclass
class SentenceCount(Constraint):
    n: int = 3
    kind = "sentence_count"
    zh = "回答恰好包含{n}个句子。"
    en = "Answer in exactly {n} sentences."

    def check(self, reply, prompt=""):
        return sentences(reply) == self.n

    def fix(self, reply, prompt=""):
        found = sentence_list(reply)
        return "".join(found[: self.n]) if len(found) >= self.n else None


@dataclass
class ParagraphCount(Constraint):
    n: int = 2
    kind = "paragraph_count"
    conflicts = frozenset({"json_format", "quotation"})
    zh = "回答分为{n}段，段与段之间空一行。"
    en = "Write exactly {n} paragraphs separated by a blank line."

    def check(self, reply, prompt=""):
        return len(paragraphs(reply)) == self.n

    def fix(self, reply, prompt=""):
        groups = _split_sentences(reply, self.n)
        return None if groups is None else "\n\n".join(groups)


@dataclass
class IncludeKeywords(Constraint):
    words: list[str] = field(default_factory=list)
    kind = "include_keywords"
    zh = "回答中必须包含这些词：{joined}。"
    en = "Include these words: {joined}."

    def text(self, lang="zh"):
        return (self.zh if lang == "zh" else self.en).format(joined="、".join(self.words))

    def check(self, reply, prompt=""):
        return all(w in reply for w in self.words)

    def fix(self, reply, prompt=""):
        missing = [w for w in self.words if w not in reply]
        return reply.rstrip() + "（" + "、".join(missing) + "）" if missing else reply

    def required(self):
        return set(self.words)


@dataclass
class ExcludeKeywords(Constraint):
    words: list[str] = field(default_factory=list)
    kind = "exclude_keywords"
    zh = "回答中不要出现这些词：{joined}。"
    en = "Do not use these words: {joined}."

    def text(self, lang="zh"):
        return (self.zh if lang == "zh" else self.en).format(joined="、".join(self.words))

    def check(self, reply, prompt=""):
        return not any(w in reply for w in self.words)

    def fix(self, reply, prompt=""):
        for word in self.words:
            reply = reply.replace(word, "")
        return reply

    def violated_by(self, text):
        return any(w in text for w in self.words)


@dataclass
class KeywordFrequency(Constraint):
    word: str = ""
    n: int = 2
    kind = "keyword_frequency"
    zh = "“{word}”这个词至少出现{n}次。"
    en = "Use the word '{word}' at least {n} times."

    def check(self, reply, prompt=""):
        return reply.count(self.word) >= self.n

    def fix(self, reply, prompt=""):
        return reply.rstrip() + "（" + "、".join([self.word] * max(self.n - reply.count(self.word), 0)) + "）"

    def required(self):
        return {self.word}


@dataclass
class StartWith(Constraint):
    phrase: str = ""
    kind = "start_with"
    conflicts = frozenset({"json_format", "quotation", "repeat_request", "markdown_title"})
    zh = "回答以“{phrase}”开头。"
    en = "Start your answer with '{phrase}'."

    def check(self, reply, prompt=""):
        return reply.strip().startswith(self.phrase)

    def fix(self, reply, prompt=""):
        return self.phrase + reply.strip()

    def required(self):
        return {self.phrase}


@dataclass
class EndWith(Constraint):
    phrase: str = ""
    kind = "end_with"
    conflicts = frozenset({"json_format", "quotation", "postscript", "two_responses"})
    zh = "回答以“{phrase}”结尾，后面不要再有别的内容。"
    en = "End your answer with '{phrase}' and nothing after it."

    def check(self, reply, prompt=""):
        return reply.strip().endswith(self.phrase)

    def fix(self, reply, prompt=""):
        return reply.strip() + self.phrase

    def required(self):
        return {self.phrase}


@dataclass
class BulletList(Constraint):
    n: int = 3
    kind = "bullet_list"
    conflicts = frozenset({"json_format", "numbered_list", "quotation", "sentence_count"})
    zh = "用{n}个以“- ”开头的要点回答。"
    en = "Answer with exactly {n} bullet points starting with '- '."

    def check(self, reply, prompt=""):
        return len(BULLET.findall(reply)) == self.n

    def fix(self, reply, prompt=""):
        groups = _split_sentences(reply, self.n)
        return None if groups is None else "\n".join(f"- {g}" for g in groups)


@dataclass
class NumberedList(Constraint):
    n: int = 3
    kind = "numbered_list"
    conflicts = frozenset({"json_format", "bullet_list", "quotation", "sentence_count"})
    zh = "用编号列表回答，共{n}条（1. 2. 3. ……）。"
    en = "Answer as a numbered list of exactly {n} items."

    def check(self, reply, prompt=""):
        return len(NUMBERED.findall(reply)) == self.n

    def fix(self, reply, prompt=""):
        groups = _split_sentences(reply, self.n)
        return None if groups is None else "\n".join(f"{i}. {g}" for i, g in enumerate(groups, 1))


@dataclass
class JsonFormat(Constraint):
    kind = "json_format"
    conflicts = frozenset(
        {
            "paragraph_count", "start_with", "end_with", "bullet_list", "numbered_list", "markdown_title",
            "quotation", "repeat_request", "postscript", "two_responses", "no_commas", "highlight", "sections",
        }
    )  # fmt: skip
    zh = "整个回答必须是合法的JSON。"
    en = "Your entire answer must be valid JSON."

    def check(self, reply, prompt=""):
        text = reply.strip()
        if text.startswith("```"):
            text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return False
        return True

    def fix(self, reply, prompt=""):
        return json.dumps({"回答": reply.strip()}, ensure_ascii=False)


@dataclass
class MarkdownTitle(Constraint):
    kind = "markdown_title"
    conflicts = frozenset({"json_format", "start_with", "quotation", "repeat_request"})
    zh = "第一行写一个Markdown一级标题（以“# ”开头）。"
    en = "Begin with a Markdown level-1 title ('# ...')."

    def check(self, reply, prompt=""):
        first = reply.strip().splitlines()[0] if reply.strip() else ""
        return bool(re.match(r"#\s+\S", first))

    def fix(self, reply, prompt=""):
        return "# 回答\n" + reply.strip()


@dataclass
class ChineseOnly(Constraint):
    kind = "chinese_only"
    conflicts = frozenset({"english_only", "all_capitals"})
    zh = "只用中文回答，不要出现英文字母。"
    en = "Answer in Chinese only, with no Latin letters."

    def check(self, reply, prompt=""):
        return bool(HAN.search(reply)) and not LATIN.search(reply)

    def violated_by(self, text):
        return bool(LATIN.search(text))

    def fix(self, reply, prompt=""):
        fixed = LATIN.sub("", reply)
        return fixed if HAN.search(fixed) else None


@dataclass
class EnglishOnly(Constraint):
    kind = "english_only"
    conflicts = frozenset({"chinese_only", "postscript", "sections"})  # whose Chinese markers hold Han characters
    zh = "只用英文回答，不要出现汉字。"
    en = "Answer in English only, with no Chinese characters."

    def check(self, reply, prompt=""):
        return bool(LATIN.search(reply)) and not HAN.search(reply)

    def violated_by(self, text):
        return bool(HAN.search(text))


@dataclass
class AllCapitals(Constraint):
    kind = "all_capitals"
    conflicts = frozenset({"chinese_only", "postscript", "sections"})
    zh = "用英文回答，并且全部使用大写字母。"
    en = "Answer in English, in capital letters only."

    def check(self, reply, prompt=""):
        return bool(LATIN.search(reply)) and not HAN.search(reply) and reply == reply.upper()

    def fix(self, reply, prompt=""):
        return reply.upper() if LATIN.search(reply) and not HAN.search(reply) else None

    def violated_by(self, text):
        return bool(HAN.search(text)) or text != text.upper()


@dataclass
class NoCommas(Constraint):
    kind = "no_commas"
    conflicts = frozenset({"json_format"})
    zh = "回答中不要使用任何逗号（，或,）。"
    en = "Do not use any commas."

    def check(self, reply, prompt=""):
        return "，" not in reply and "," not in reply

    def violated_by(self, text):
        return not self.check(text)

    def fix(self, reply, prompt=""):
        return reply.replace("，", "、").replace(",", " ")


@dataclass
class FullWidthPunctuation(Constraint):
    kind = "full_width_punctuation"
    conflicts = frozenset({"json_format", "english_only"})
    zh = "标点符号一律使用中文全角标点。"
    en = "Use only full-width Chinese punctuation."

    def check(self, reply, prompt=""):
        return not ASCII_PUNCTUATION.search(reply)

    def violated_by(self, text):
        return not self.check(text)

    def fix(self, reply, prompt=""):
        return reply.translate(str.maketrans({",": "，", ".": "。", "!": "！", "?": "？", ";": "；", ":": "："}))


@dataclass
class Quotation(Constraint):
    kind = "quotation"
    conflicts = frozenset(
        {"json_format", "start_with", "end_with", "bullet_list", "numbered_list", "markdown_title", "paragraph_count"}
    )
    zh = "把整个回答放在一对中文双引号“”里。"
    en = "Wrap your entire answer in double quotation marks."

    def check(self, reply, prompt=""):
        text = reply.strip()
        return len(text) > 1 and ((text[0], text[-1]) in (("“", "”"), ('"', '"')))

    def fix(self, reply, prompt=""):
        return f"“{reply.strip()}”"


@dataclass
class RepeatRequest(Constraint):
    request: str = ""
    kind = "repeat_request"
    conflicts = frozenset({"json_format", "start_with", "markdown_title", "quotation"})
    zh = "先一字不差地重复下面的请求，再回答：{request}"
    en = "First repeat the request word for word, then answer: {request}"

    def check(self, reply, prompt=""):
        return reply.strip().startswith(self.request)

    def fix(self, reply, prompt=""):
        return f"{self.request}\n{reply.strip()}"

    def required(self):
        return {self.request}


@dataclass
class Postscript(Constraint):
    kind = "postscript"
    conflicts = frozenset({"json_format", "end_with", "quotation"})
    zh = "在回答最后加一段以“附注：”开头的附言。"
    en = "End with a postscript starting with 'P.S.'."

    def check(self, reply, prompt=""):
        last = paragraphs(reply)[-1] if reply.strip() else ""
        return bool(re.search(r"^\s*(附注：|P\.S\.)", last, re.MULTILINE))

    def fix(self, reply, prompt=""):
        return reply.rstrip() + "\n附注：以上供参考。"


@dataclass
class Placeholders(Constraint):
    n: int = 2
    kind = "placeholders"
    zh = "回答中至少包含{n}个用方括号表示的占位符，例如[地址]。"
    en = "Include at least {n} placeholders in square brackets, like [address]."

    def check(self, reply, prompt=""):
        return len(re.findall(r"\[[^\[\]]+\]", reply)) >= self.n

    def fix(self, reply, prompt=""):
        return reply.rstrip() + "".join(f"[补充{i}]" for i in range(1, self.n + 1))


@dataclass
class Highlight(Constraint):
    n: int = 2
    kind = "highlight"
    conflicts = frozenset({"json_format"})
    zh = "用Markdown把至少{n}处内容加粗，例如**重点**。"
    en = "Highlight at least {n} parts with markdown, like **this**."

    def check(self, reply, prompt=""):
        return len(re.findall(r"\*\*[^*\n]+\*\*", reply)) >= self.n

    def fix(self, reply, prompt=""):
        groups = _split_sentences(reply, self.n)
        return None if groups is None else "".join(f"**{g}**" for g in groups)


@dataclass
class Sections(Constraint):
    n: int = 2
    kind = "sections"
    conflicts = frozenset({"json_format", "quotation"})
    zh = "回答分为{n}个部分，每部分以“第X部分”开头。"
    en = "Write {n} sections, each starting with 'Section X'."

    def check(self, reply, prompt=""):
        return len(re.findall(r"^\s*(第[一二三四五六七八九十\d]+部分|Section \d+)", reply, re.MULTILINE)) == self.n

    def fix(self, reply, prompt=""):
        groups = _split_sentences(reply, self.n)
        if groups is None or self.n > len(CHINESE_NUMBERS):
            return None
        return "\n".join(f"第{CHINESE_NUMBERS[i]}部分：{g}" for i, g in enumerate(groups))


@dataclass
class TwoResponses(Constraint):
    kind = "two_responses"
    conflicts = frozenset({"json_format", "end_with", "quotation", "postscript"})
    zh = "给出两个不同的回答，中间用六个星号******隔开。"
    en = "Give two different answers separated by six asterisks ******."

    def check(self, reply, prompt=""):
        parts = [p.strip() for p in reply.split("******")]
        return len(parts) == 2 and all(parts) and parts[0] != parts[1]


KINDS: dict[str, type[Constraint]] = {
    cls.kind: cls
    for cls in (
        MinCharacters, MaxCharacters, SentenceCount, ParagraphCount, IncludeKeywords, ExcludeKeywords,
        KeywordFrequency, StartWith, EndWith, BulletList, NumberedList, JsonFormat, MarkdownTitle, ChineseOnly,
        EnglishOnly, AllCapitals, NoCommas, FullWidthPunctuation, Quotation, RepeatRequest, Postscript,
        Placeholders, Highlight, Sections, TwoResponses,
    )
}  # fmt: skip


def from_dict(data) -> Constraint:
    """A constraint from :meth:`Constraint.to_dict`, every field given with its type; a
    ValueError saying what is wrong otherwise."""
    if not isinstance(data, dict):
        raise ValueError("constraint not an object")
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise ValueError("unknown constraint kind")
    cls = KINDS[kind]
    expected = {f.name: f.type for f in fields(cls)}
    if set(data) != set(expected):
        raise ValueError(f"{kind} constraint without its fields ({', '.join(expected) or 'none'})")
    for name, value in data.items():
        wanted = {"int": int, "str": str, "list[str]": list}[str(expected[name])]
        if not isinstance(value, wanted) or isinstance(value, bool) or (wanted is not int and not value):
            raise ValueError(f"{kind} constraint with a bad {name}")
        if wanted is int and value < 1 or wanted is list and not all(isinstance(w, str) and w for w in value):
            raise ValueError(f"{kind} constraint with a bad {name}")
    return cls(**data)


def compatible(constraints: list[Constraint]) -> bool:
    """No kind twice, no pair that cannot hold together (either side may say so), no string one
    constraint requires (a keyword, a first or last phrase, the request to repeat) that another
    forbids (an excluded word, a comma, a Latin letter, too many characters), and a length floor
    below its ceiling."""
    kinds = [c.kind for c in constraints]
    if len(set(kinds)) < len(kinds):
        return False
    if any(b.kind in a.conflicts or a.kind in b.conflicts for a in constraints for b in constraints):
        return False
    required = set().union(*(c.required() for c in constraints))
    if any(c.violated_by(text) for c in constraints for text in required):
        return False
    for ceiling in (c for c in constraints if isinstance(c, MaxCharacters)):
        if ceiling.violated_by("".join(required)):
            return False
    least = max((c.n for c in constraints if isinstance(c, MinCharacters)), default=0)
    return least <= min((c.n for c in constraints if isinstance(c, MaxCharacters)), default=least)


def loose_variants(reply: str) -> list[str]:
    """IFEval's loose reading: the reply, without its first line, its last line or both, each
    also without markdown emphasis."""
    lines = reply.split("\n")
    variants = [reply, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for text in variants for v in (text, text.replace("*", ""))]


def follows(constraint: Constraint, reply: str, prompt: str = "") -> tuple[bool, bool]:
    """(strict, loose) verdicts of ``constraint`` on ``reply``."""
    strict = constraint.check(reply, prompt)
    return strict, strict or any(constraint.check(v, prompt) for v in loose_variants(reply) if v)


# ------------------------------------------------------------------ drawing constraints for a prompt


def _draw(kind: str, rng: random.Random, words: list[str], request: str) -> Constraint:
    picks: dict[str, Callable[[], Constraint]] = {
        "min_characters": lambda: MinCharacters(rng.choice([20, 40, 60, 100])),
        "max_characters": lambda: MaxCharacters(rng.choice([30, 50, 80, 120])),
        "sentence_count": lambda: SentenceCount(rng.randint(1, 4)),
        "paragraph_count": lambda: ParagraphCount(rng.randint(2, 3)),
        "include_keywords": lambda: IncludeKeywords(rng.sample(words, min(2, len(words)))),
        "exclude_keywords": lambda: ExcludeKeywords(rng.sample(words, 1)),
        "keyword_frequency": lambda: KeywordFrequency(rng.choice(words), rng.randint(2, 3)),
        "start_with": lambda: StartWith(rng.choice(["好的，", "关于这个问题，", "首先，", "简单来说，"])),
        "end_with": lambda: EndWith(rng.choice(["谢谢。", "以上。", "希望对你有帮助。", "就是这样。"])),
        "bullet_list": lambda: BulletList(rng.randint(2, 4)),
        "numbered_list": lambda: NumberedList(rng.randint(2, 4)),
        "repeat_request": lambda: RepeatRequest(request),
        "placeholders": lambda: Placeholders(rng.randint(1, 3)),
        "highlight": lambda: Highlight(rng.randint(1, 3)),
        "sections": lambda: Sections(rng.randint(2, 3)),
    }
    return picks[kind]() if kind in picks else KINDS[kind]()


def compose(
    request: str, words: list[str], rng: random.Random, count: int, kinds: tuple[str, ...] = tuple(KINDS)
) -> list[Constraint]:
    """``count`` compatible constraints for ``request`` (keywords drawn from ``words``)."""
    usable = [k for k in kinds if words or k not in ("include_keywords", "exclude_keywords", "keyword_frequency")]
    for _ in range(200):
        chosen = [_draw(kind, rng, words, request) for kind in rng.sample(usable, min(count, len(usable)))]
        if compatible(chosen):
            return chosen
    raise ValueError(f"no {count} compatible constraints among {len(usable)} kinds")


def instruction(request: str, constraints: list[Constraint], lang: str = "zh") -> str:
    """The request followed by its constraints, one per line."""
    if not constraints:
        return request
    lines = [request, "要求：" if lang == "zh" else "Requirements:"]
    lines += [f"{i}. {c.text(lang)}" for i, c in enumerate(constraints, 1)]
    return "\n".join(lines)
