"""`ctlab tokenizer train`: a byte-level BPE that round-trips any text, keeps Han runs apart from
Latin letters and splits digits, compresses Chinese, trains deterministically, loads with
transformers (special tokens, chat template with assistant masks) and reports user errors in one line."""

import contextlib
import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from ctlab.cli import main
from ctlab.data.demo import code_documents, heldout_chinese, inews_articles
from ctlab.errors import UserError
from ctlab.tokenizer.train import (
    BOS,
    EOS,
    MIN_VOCAB,
    PAD,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    save_tokenizer,
    train,
    train_tokenizer,
)

FAST = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow],
}
VOCAB = 3000  # Chinese needs a few thousand tokens to pass one character per token (600: ~0.66)
HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
MIXED_HAN_LATIN = re.compile(rf"[{HAN}][A-Za-z]|[A-Za-z][{HAN}]")
TRICKY = (
    "𠀀𪚥",  # CJK extension B
    "👨\u200d👩\u200d👧 🇨🇳 👍🏽",  # emoji sequences
    "e\u0301 a\u0308\u0323",  # combining marks
    "\u202eשלום עולם\u202c مرحبا",  # RTL and bidi controls
    "\x00\x01\x1b[0m\x7f\ufffd\ufeff",  # control characters, replacement character, BOM
    "\r\n\t \u3000\u00a0\u2028",  # whitespace of all kinds
    "ＡＢＣ１２３，。！",  # full-width forms
)


def texts_of(articles) -> list[str]:
    return [f"{title}\n{text}" for title, text in articles]


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    return texts_of(inews_articles(("train",))[:300])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, train_texts):
    out = tmp_path_factory.mktemp("tokenizer") / "ctlab"
    save_tokenizer(train_tokenizer(train_texts, VOCAB, progress=False), str(out))
    return out


@pytest.fixture(scope="module")
def raw(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def token_texts(raw: Tokenizer, text: str) -> list[str]:
    """The piece of ``text`` under each token (byte tokens inside a character cover the character)."""
    return [text[a:b] for a, b in raw.encode(text, add_special_tokens=False).offsets]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("ctlab: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- the saved folder ----------------------------------------------------------------------------------


def test_folder_loads_with_transformers(tokenizer_dir, hf, raw):
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tokenizer_dir.iterdir()}
    assert not [p for p in tokenizer_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert len(hf) == raw.get_vocab_size() == VOCAB
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (BOS, EOS, PAD)
    assert [hf.bos_token_id, hf.eos_token_id, hf.pad_token_id] == [raw.token_to_id(t) for t in (BOS, EOS, PAD)]
    assert set(SPECIAL_TOKENS) <= set(hf.all_special_tokens)
    assert [raw.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for text in ("中文 text", "", "2024"):
        ids = hf(text)["input_ids"]
        assert ids[0] == hf.bos_token_id and ids.count(hf.bos_token_id) == 1
        assert ids == raw.encode(text).ids
        assert ids[1:] == hf(text, add_special_tokens=False)["input_ids"]


def test_batch_padding_uses_the_pad_token(hf):
    batch = hf(["短", "长一些的句子 with words"], padding=True)
    short = batch["input_ids"][0]
    assert hf.pad_token_id in short and short[-1] == hf.pad_token_id
    assert batch["attention_mask"][0][short.index(hf.pad_token_id)] == 0


# -- exact round trip ----------------------------------------------------------------------------------


def check_round_trip(raw: Tokenizer, hf, text: str) -> None:
    ids = raw.encode(text).ids
    assert ids[0] == raw.token_to_id(BOS)
    assert raw.decode(ids[1:], skip_special_tokens=False) == text
    hf_ids = hf(text)["input_ids"]
    assert hf_ids == ids
    assert hf.decode(hf_ids[1:]) == text
    assert hf.decode(hf_ids, skip_special_tokens=True) == text


@given(st.text() | st.text(st.characters() | st.sampled_from("".join(TRICKY))))
@settings(max_examples=300, **FAST)
@example("")
@example("".join(TRICKY))
@example(" <|end of text|> <|endoftext <|bos|")
def test_any_text_round_trips(raw, hf, text):
    if any(token in text for token in SPECIAL_TOKENS):  # matched as special tokens: see below
        return
    check_round_trip(raw, hf, text)


def test_real_text_round_trips(raw, hf):
    texts = texts_of(inews_articles(("dev",))[:100]) + [d for d in code_documents() if len(d) < 50_000][:20]
    assert not any(token in text for text in texts for token in SPECIAL_TOKENS)
    for text in texts:
        check_round_trip(raw, hf, text)


def test_special_token_text_encodes_as_the_special_token(raw, hf):
    for token in SPECIAL_TOKENS:
        token_id = raw.token_to_id(token)
        ids = raw.encode(f"前文{token}后文").ids
        assert ids.count(token_id) == 1 + (token == BOS)
        assert hf(f"前文{token}后文")["input_ids"] == ids
    assert hf("文档一<|endoftext|>文档二", add_special_tokens=False)["input_ids"].count(hf.eos_token_id) == 1


# -- pre-tokenisation -----------------------------------------------------------------------------------


def test_digits_are_split_one_per_token(raw, train_texts):
    assert token_texts(raw, "2024") == ["2", "0", "2", "4"]
    numbers = [t for t in train_texts if re.search(r"[0-9]{4}", t)]
    assert len(numbers) > 50
    for text in numbers + ["价格3.14159元, 共1000000件, 电话010-12345678"]:
        for piece in token_texts(raw, text):
            assert not re.search(r"[0-9]", piece) or re.fullmatch(r"[0-9]", piece), piece


def test_han_runs_stay_apart_from_latin_letters(raw, train_texts):
    mixed = [t for t in train_texts if MIXED_HAN_LATIN.search(t)] + ["我用iPhone看NBA直播和CCTV5新闻"]
    assert len(mixed) > 50
    for text in mixed:
        pieces = token_texts(raw, text)
        for piece in pieces:
            assert not (re.search(f"[{HAN}]", piece) and re.search("[A-Za-z]", piece)), piece
    # and no learned token holds both: merges never cross the pre-tokens
    for token_id in range(len(SPECIAL_TOKENS), raw.get_vocab_size()):
        piece = raw.decode([token_id], skip_special_tokens=False)
        assert not (re.search(f"[{HAN}]", piece) and re.search("[A-Za-z]", piece)), piece
    assert any(len(raw.decode([i])) >= 2 and re.fullmatch(f"[{HAN}]+", raw.decode([i])) for i in range(VOCAB))


def test_chinese_compresses(raw, train_texts):
    """Merged Han runs carry held-out Chinese: about three times the characters per token of UTF-8
    bytes, a third of the Han characters inside multi-character tokens, and a larger vocabulary
    compresses more."""
    texts = heldout_chinese()[:50]
    encodings = raw.encode_batch(texts, add_special_tokens=False)
    characters, tokens = sum(map(len, texts)), sum(len(e.ids) for e in encodings)
    utf8_bytes = sum(len(t.encode()) for t in texts)
    assert characters / tokens > 2.5 * characters / utf8_bytes  # about 1.1 against 0.37
    han = re.compile(f"[{HAN}]")
    in_words = sum(
        len(found)
        for text, e in zip(texts, encodings, strict=True)
        for a, b in e.offsets
        if len(found := han.findall(text[a:b])) >= 2
    )
    assert in_words > 0.2 * len(han.findall("".join(texts)))
    smaller = train_tokenizer(train_texts, 600, progress=False)
    assert sum(len(e.ids) for e in smaller.encode_batch(texts, add_special_tokens=False)) > 1.4 * tokens


def test_training_is_deterministic(train_texts, tokenizer_dir, tmp_path):
    save_tokenizer(train_tokenizer(train_texts, VOCAB, progress=False), str(tmp_path / "again"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tokenizer_dir / name).read_bytes()


# -- chat template --------------------------------------------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "北京的人口是多少？"},
    {"role": "assistant", "content": "约2,189万人 (2020年)。"},
    {"role": "user", "content": "Thanks! 再见"},
    {"role": "assistant", "content": "Bye, 再见!"},
]


def test_chat_template_renders_the_roles(hf):
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False)
    assert rendered.startswith(
        "<|bos|><|system|>\n你是一个乐于助人的助手。<|end|>\n<|user|>\n北京的人口是多少？<|end|>\n"
    )
    for message in MESSAGES:
        assert f"<|{message['role']}|>\n{message['content']}<|end|>" in rendered
    assert rendered.count("<|end|>") == len(MESSAGES)
    prompt = hf.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\n北京的人口是多少？<|end|>\n<|assistant|>\n")
    ids = hf.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    for role in ROLE_TOKENS:
        assert hf.convert_tokens_to_ids(role) in ids
    assert ids[0] == hf.bos_token_id and ids.count(hf.bos_token_id) == 1


def test_every_turn_ends_with_a_newline(hf):
    assert hf.apply_chat_template(MESSAGES, tokenize=False) == (
        "<|bos|><|system|>\n你是一个乐于助人的助手。<|end|>\n"
        "<|user|>\n北京的人口是多少？<|end|>\n"
        "<|assistant|>\n约2,189万人 (2020年)。<|end|>\n"
        "<|user|>\nThanks! 再见<|end|>\n"
        "<|assistant|>\nBye, 再见!<|end|>\n"
    )


def test_assistant_mask_marks_the_answers_and_their_end(hf):
    out = hf.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append(ids[start:i])
            start = None
    answers = [m["content"] for m in MESSAGES if m["role"] == "assistant"]
    assert [hf.decode(run) for run in runs] == [a + "<|end|>" for a in answers]
    assert runs == [hf(a + "<|end|>", add_special_tokens=False)["input_ids"] for a in answers]
    unmasked = hf.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "<|assistant|>" in unmasked and "北京的人口是多少？" in unmasked and "Bye" not in unmasked


# -- errors ------------------------------------------------------------------------------------------------


def test_vocab_below_the_bytes_and_specials_is_refused(train_texts):
    with pytest.raises(UserError, match=str(MIN_VOCAB)):
        train_tokenizer(train_texts[:5], MIN_VOCAB - 1, progress=False)
    smallest = train_tokenizer(train_texts[:5], MIN_VOCAB, progress=False)
    assert smallest.get_vocab_size() == MIN_VOCAB
    assert smallest.decode(smallest.encode(train_texts[0]).ids[1:]) == train_texts[0]


def write_jsonl(path, texts, extra: bytes = b""):
    path.write_bytes(b"".join(json.dumps({"text": t}, ensure_ascii=False).encode() + b"\n" for t in texts) + extra)
    return path


def test_train_on_files(train_texts, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", train_texts[:40], b'{"text": broken\n')
    summary = train([str(corpus)], str(tmp_path / "tok"), 400, progress=False)
    assert summary["documents"] == 40 and summary["characters"] == sum(map(len, train_texts[:40]))
    assert summary["bad_records"] == {"malformed_json": 1} and summary["vocab_size"] == 400
    recorded = json.loads((tmp_path / "tok" / "training.json").read_text())
    assert recorded["files"] == [str(corpus)] and recorded["documents"] == 40
    assert len(summary["tokenizer_sha256"]) == 64


def test_train_needs_documents(tmp_path):
    with pytest.raises(UserError, match="input not found: .*missing.jsonl"):
        train([str(tmp_path / "missing.jsonl")], str(tmp_path / "a"), 400, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no input files"):
        train([str(tmp_path / "empty")], str(tmp_path / "b"), 400, progress=False)
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b'{"text": "   "}\n\n{"oops": 1}\n')
    with pytest.raises(UserError, match="no documents"):
        train([str(blank)], str(tmp_path / "c"), 400, progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_saving_over_an_unrelated_folder_keeps_its_files(train_texts, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "corpus.jsonl").write_text('{"text": "precious"}\n')
    with contextlib.suppress(Exception):  # refusing the folder is fine too
        save_tokenizer(train_tokenizer(train_texts[:5], MIN_VOCAB, progress=False), str(out))
    assert (out / "corpus.jsonl").is_file()


# -- the CLI -----------------------------------------------------------------------------------------------


def test_cli_train(train_texts, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", train_texts[:30])
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--out", str(out), "--vocab-size", "400", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "trained a 400-token byte-level BPE on 30 documents" in printed and str(out) in printed
    assert (out / "tokenizer.json").is_file() and (out / "training.json").is_file()
    # rerunning replaces the folder
    assert main(["tokenizer", "train", str(corpus), "--out", str(out), "--vocab-size", "300", "--no-progress"]) == 0
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == 300


def test_cli_errors_are_one_line(train_texts, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", train_texts[:3])
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n')
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "missing.jsonl"), "--vocab-size", "400"], "input not found"),
        ([str(corpus), "--vocab-size", "10"], f"at least {MIN_VOCAB}"),
        ([str(blank), "--vocab-size", "400"], "no documents"),
        ([str(tmp_path / "empty"), "--vocab-size", "400"], "no input files"),
    ]
    for args, message in cases:
        assert main(["tokenizer", "train", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2, args
        assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
