"""Records a user brings and how they become tokens: bad lines counted by reason, replies found
through the chat template, examples packed whole with their own positions."""

import json

import numpy as np
import pytest
from align_files import write_jsonl

from ctlab.align.encode import ChatEncoder, Encoded
from ctlab.align.packing import PackedExamples
from ctlab.align.records import conversation, preference, read_records
from ctlab.errors import UserError
from ctlab.tokens.packed import IGNORE_INDEX


@pytest.fixture(scope="module")
def encoder(text_model):
    from transformers import AutoTokenizer

    return ChatEncoder(AutoTokenizer.from_pretrained(str(text_model)))


def test_bad_lines_are_counted_by_reason(tmp_path):
    good = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好！"}]}
    lines = [
        json.dumps(good, ensure_ascii=False),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"text": "没有对话"}, ensure_ascii=False),
        json.dumps({"messages": [{"role": "user", "content": "只有提问"}]}, ensure_ascii=False),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),
        "",
        "{also not json",
        json.dumps(good, ensure_ascii=False),
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = read_records(path, conversation, "conversations")
    assert len(records.items) == 2
    assert records.left_out == {
        "not JSON": [2, 2],
        "not an object": [1, 3],
        "no messages": [1, 4],
        "no assistant turn": [1, 5],
        "messages: message with an unknown role": [1, 6],
        "messages: message without string content": [1, 7],
    }
    assert "left out 7: 2 not JSON (first at line 2)" in records.summary("conversations")


def test_preferences_take_strings_or_messages(tmp_path):
    records = [
        {"prompt": "问题", "chosen": "好的回答", "rejected": "差的回答"},
        {
            "prompt": [{"role": "system", "content": "简洁"}, {"role": "user", "content": "问"}],
            "chosen": "甲",
            "rejected": [{"role": "assistant", "content": "乙"}],
        },
        {"prompt": "问", "chosen": "同", "rejected": "同"},
        {
            "prompt": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
            "chosen": "甲",
            "rejected": "乙",
        },
        {"prompt": "问", "chosen": [{"role": "user", "content": "甲"}], "rejected": "乙"},
        {"prompt": "问", "chosen": "甲"},
    ]
    read = read_records(write_jsonl(tmp_path / "p.jsonl", records), preference, "pairs")
    assert [p.prompt[-1]["content"] for p in read.items] == ["问题", "问"]
    assert read.items[0].chosen == [{"role": "assistant", "content": "好的回答"}]
    assert set(read.left_out) == {
        "chosen equal to rejected",
        "prompt not ending with a user turn",
        "chosen holds a turn that is not the assistant's",
        "no rejected",
    }


def test_a_file_without_a_usable_record_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{}\n[]\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no usable conversations from .*left out 2: 1 no messages"):
        read_records(path, conversation, "conversations")
    with pytest.raises(UserError, match="no such file"):
        read_records(tmp_path / "missing.jsonl", conversation, "conversations")


def test_targets_are_the_assistant_turns(encoder):
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "今天天气如何？"},
        {"role": "assistant", "content": "晴朗。"},
        {"role": "user", "content": "明天呢？"},
        {"role": "assistant", "content": "有雨。"},
    ]
    encoded = encoder.conversation(conversation({"messages": messages}))
    tokenizer = encoder.tokenizer
    assert tokenizer.decode(encoded.ids.tolist(), skip_special_tokens=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    spans, start = [], None
    for i, target in enumerate([*encoded.targets.tolist(), False]):
        if target and start is None:
            start = i
        if not target and start is not None:
            spans.append(tokenizer.decode(encoded.ids[start:i].tolist(), skip_special_tokens=False))
            start = None
    assert spans == ["晴朗。<|end|>\n", "有雨。<|end|>\n"]
    everything = encoder.conversation(conversation({"messages": messages}), train_on="all")
    assert everything.targets[1:].all() and not everything.targets[0]


def test_a_pair_shares_its_prompt_tokens(encoder):
    chosen, rejected = encoder.preference(preference({"prompt": "问题", "chosen": "好", "rejected": "不好"}))
    prompt = encoder.render([{"role": "user", "content": "问题"}], generation_prompt=True)
    for encoded in (chosen, rejected):
        assert encoded.ids[: len(prompt)].tolist() == prompt
        assert not encoded.targets[: len(prompt)].any() and encoded.targets[len(prompt) :].all()


def test_examples_pack_whole_with_their_own_positions_and_segments():
    def example(*lengths):
        return [Encoded(np.arange(10, 10 + n), np.arange(n) % 2 == 1) for n in lengths]

    examples = [example(5), example(3, 4), example(9), example(2), example(6, 6)]
    packed = PackedExamples(examples, seq_len=10, pad_id=0, folder="mem")
    assert packed.too_long == 1  # the 6 + 6 pair: left out, not cut
    rows = [packed[i] for i in range(len(packed))]
    assert sum(int((r["segments"] >= 0).sum()) for r in rows) == 5 + 7 + 9 + 2
    for row in rows:
        for segment in set(row["segments"].tolist()) - {-1}:
            where = np.flatnonzero(row["segments"] == segment)
            assert where.tolist() == list(range(where[0], where[0] + len(where)))  # contiguous
            assert row["position_ids"][where].tolist() == list(range(len(where)))
            assert row["input_ids"][where].tolist() == list(range(10, 10 + len(where)))
            # a label is the next token of the same sequence, on odd (target) positions only
            labels = row["labels"][where]
            expected = [
                10 + t + 1 if (t + 1) % 2 == 1 and t + 1 < len(where) else IGNORE_INDEX for t in range(len(where))
            ]
            assert labels.tolist() == expected
    # the pair's two sequences are segments 1 and 2, in one row
    pair_rows = [r for r in rows if 1 in r["segments"]]
    assert len(pair_rows) == 1 and 2 in pair_rows[0]["segments"]


def test_records_an_encoder_refuses_are_counted_with_their_line(tmp_path):
    from ctlab.align.records import Malformed

    lines = [{"messages": [{"role": "user", "content": x}, {"role": "assistant", "content": "好"}]} for x in "甲乙丙"]
    records = read_records(write_jsonl(tmp_path / "c.jsonl", lines), conversation, "conversations")

    def encode(record):
        if record.messages[0]["content"] == "乙":
            raise Malformed("refused by the chat template")
        return record

    assert len(records.convert(encode)) == 2
    assert records.left_out == {"refused by the chat template": [1, 2]} and records.lines == [1, 3]
