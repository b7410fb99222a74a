"""``ctlab generate`` and ``ctlab chat`` as a user runs them: JSON output equal to the engine's,
chat templates, stop strings, the engine options, and one-line errors for bad input."""

import io
import json

import pytest

from ctlab.cli import main
from ctlab.infer.engine import Engine
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.text import TextModel, TextStream
from ctlab.model.hf import load_model


def run_json(capsys, *argv):
    assert main(["generate", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_equals_the_engine(text_model, capsys):
    out = run_json(capsys, text_model, "--prompt", "今天的新闻", "--max-new-tokens", 12)
    text = TextModel(text_model)
    ids = text.encode("今天的新闻")
    expected = Engine(load_model(text_model)).generate(
        [ids], SamplingParams(max_new_tokens=12, stop_token_ids=text.stop_ids(False))
    )[0]
    assert out["prompt_token_ids"] == ids and out["token_ids"] == expected.output
    assert out["text"] == text.decode(expected.output)
    stats = out["stats"]
    assert stats["prompt_tokens"] == len(ids) and stats["new_tokens"] == len(expected.output)
    assert stats["kv_bytes"] == stats["full_kv_bytes"] > 0 and stats["acceptance_rate"] is None


@pytest.mark.parametrize(
    "options",
    [
        ["--speculate", "layerskip", "--exit-layer", "2"],
        ["--speculate", "lookup"],
        ["--kv-policy", "snapkv", "--kv-capacity", "16", "--kv-window", "4"],
        ["--quantize", "int8"],
        ["--compile"],
    ],
    ids=["layerskip", "lookup", "snapkv", "int8", "compile"],
)
def test_engine_options_reach_the_engine(text_model, capsys, options):
    prompt = "新闻" * 20
    plain = run_json(capsys, text_model, "--prompt", prompt, "--max-new-tokens", 10)
    out = run_json(capsys, text_model, "--prompt", prompt, "--max-new-tokens", 10, *options)
    if options[0] == "--speculate":
        assert out["token_ids"] == plain["token_ids"] and out["stats"]["acceptance_rate"] is not None
    elif options[0] == "--kv-policy":
        assert out["stats"]["kv_bytes"] < out["stats"]["full_kv_bytes"]
    elif options[0] == "--compile":  # compiled decoding: the same greedy reply
        assert out["token_ids"] == plain["token_ids"]
    else:
        assert len(out["token_ids"]) == 10


def test_messages_go_through_the_chat_template(text_model, capsys, tmp_path):
    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    out = run_json(capsys, text_model, "--messages", json.dumps(messages, ensure_ascii=False), "--max-new-tokens", 4)
    text = TextModel(text_model)
    assert out["prompt_token_ids"] == text.chat_prompt(messages)
    rendered = text.tokenizer.decode(out["prompt_token_ids"])
    assert rendered == text.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|system|>\n你是助手<|end|>" in rendered and rendered.endswith("<|assistant|>\n")
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages))
    assert run_json(capsys, text_model, "--messages", path, "--max-new-tokens", 4)["token_ids"] == out["token_ids"]


def test_prompt_file_and_streamed_text(text_model, capsys, tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("今天的新闻", encoding="utf-8")
    as_json = run_json(capsys, text_model, "--prompt-file", path, "--max-new-tokens", 12)
    assert main(["generate", str(text_model), "--prompt-file", str(path), "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip("\n") == as_json["text"]
    assert "prompt tokens" in captured.err and "tokens/s" in captured.err


def test_stop_strings_cut_the_text(text_model):
    text = TextModel(text_model)
    ids = text.encode("今天新闻记者报道了北京的消息")
    whole = text.decode(ids)
    stop = whole[5:7]
    stream = TextStream(text, [stop])
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    assert "".join(pieces) == stream.text == whole[: whole.index(stop)]


def test_chat_streams_replies_and_resets(text_model, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("你好\n/reset\n再见\n/quit\n"))
    assert main(["chat", str(text_model), "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    text = TextModel(text_model)
    engine = Engine(load_model(text_model))
    params = SamplingParams(max_new_tokens=5, stop_token_ids=text.stop_ids(True))
    first = engine.generate([text.chat_prompt([{"role": "user", "content": "你好"}])], params)[0]
    second = engine.generate([text.chat_prompt([{"role": "user", "content": "再见"}])], params)[0]  # after /reset
    assert captured.out.splitlines() == [text.decode(first.output), text.decode(second.output)]
    assert "(conversation reset)" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/no/such/model", "--prompt", "x"], "does not exist"),
        (["{model}", "--messages", "[{"], "--messages is not valid JSON"),
        (["{model}", "--messages", '[{"role": "robot", "content": "x"}]'], "role must be"),
        (["{model}", "--prompt-file", "/no/such/file"], "cannot read --prompt-file"),
        (["{model}", "--prompt", "新闻" * 400], "does not fit the context"),
        (["{model}", "--prompt", "x", "--speculate", "draft"], "needs --draft MODEL"),
        (["{model}", "--prompt", "x", "--speculate", "layerskip", "--exit-layer", "9"], "between 1 and 3"),
        (["{model}", "--prompt", "x", "--kv-policy", "snapkv", "--kv-capacity", "999"], "larger than the context"),
        (["{model}", "--prompt", "x", "--kv-policy", "streaming", "--speculate", "lookup"], "does not combine"),
        (["{model}", "--prompt", "x", "--device", "cuda:7"], "cuda"),
        (["{model}", "--prompt", "x", "--temperature", "-1"], "temperature"),
    ],
)
def test_bad_input_is_a_one_line_error(text_model, capsys, argv, message):
    argv = [a.replace("{model}", str(text_model)) for a in argv]
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctlab: error:") and message in err and "\n" not in err


def test_a_draft_with_another_tokenizer_is_refused(text_model, tmp_path, capsys):
    import shutil

    other = tmp_path / "draft"
    shutil.copytree(text_model, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["added_tokens"][0]["content"] = "<|other|>"
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(["generate", str(text_model), "--prompt", "x", "--speculate", "draft", "--draft", str(other)]) == 2
    assert "another tokenizer" in capsys.readouterr().err


class Letters:
    """A stand-in text model: token i decodes to the i-th lowercase letter."""

    @staticmethod
    def decode(ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_the_earliest_stop_string_wins_and_later_tokens_do_not_count():
    stream = TextStream(Letters(), ["cd", "bc"])
    pieces = [stream.push(t) for t in (0, 1, 2, 3)]  # a b c d
    assert stream.text == "a" and "".join(pieces) == "a" and stream.stopped
    assert stream.kept == 3 and stream.push(4) == "" and stream.kept == 3  # "c" completed "bc"


def test_a_chat_template_that_refuses_is_a_one_line_error(text_model, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(text_model, folder)
    (folder / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")
    from ctlab.errors import UserError

    with pytest.raises(UserError, match="refuses these messages.*roles must alternate"):
        TextModel(folder).chat_prompt([{"role": "user", "content": "x"}])
