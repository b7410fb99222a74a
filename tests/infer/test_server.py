"""``ctlab serve`` for real: the server runs on 127.0.0.1 in its own process and the official
``openai`` client talks to it — models, completions and chat (streaming and not), concurrent
clients, bad requests in OpenAI's error shape, a full queue, a client that disconnects, and
the API key."""

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai import OpenAI

from ctlab.infer.engine import Engine
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.text import TextModel
from ctlab.model.hf import load_model


def start(model, *options):
    process = subprocess.Popen(
        [sys.executable, "-m", "ctlab.cli", "serve", str(model), "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        process.kill()
        raise AssertionError(f"no address in {line!r}: {process.stderr.read()}")
    return process, f"http://127.0.0.1:{found.group(1)}"


def stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(text_model):  # compiled decoding, serve's default: replies are checked against the uncompiled engine
    process, url = start(text_model, "--max-batch", "4")
    yield url
    stop(process)


def client(url, **kwargs):
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **kwargs)


def reference(model_folder, prompt_ids, max_tokens, chat):
    text = TextModel(model_folder)
    params = SamplingParams(max_new_tokens=max_tokens, stop_token_ids=text.stop_ids(chat))
    return Engine(load_model(model_folder)).generate([prompt_ids], params)[0]


USER = [{"role": "user", "content": "今天有什么新闻？"}]


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list()] == ["model"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_chat_completion_equals_the_engine(server, text_model):
    reply = client(server).chat.completions.create(model="model", messages=USER, max_tokens=12, temperature=0)
    text = TextModel(text_model)
    expected = reference(text_model, text.chat_prompt(USER), 12, chat=True)
    assert reply.choices[0].message.content == text.decode(expected.output)
    assert reply.choices[0].finish_reason == ("length" if len(expected.output) == 12 else "stop")
    assert reply.usage.prompt_tokens == len(expected.prompt) and reply.usage.completion_tokens == len(expected.output)


def test_streamed_chat_equals_the_whole_reply_and_ends_with_done(server):
    api = client(server)
    whole = api.chat.completions.create(model="model", messages=USER, max_tokens=12, temperature=0)
    chunks = list(
        api.chat.completions.create(
            model="model",
            messages=USER,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    body = {"model": "model", "messages": USER, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_completions_with_logprobs_and_stop(server, text_model):
    api = client(server)
    reply = api.completions.create(model="model", prompt="今天", max_tokens=8, temperature=0, logprobs=2)
    expected = reference(text_model, TextModel(text_model).encode("今天"), 8, chat=False)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(expected.output) and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    text = reply.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    cut = api.completions.create(model="model", prompt="今天", max_tokens=8, temperature=0, stop=[stop], logprobs=1)
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    kept = cut.usage.completion_tokens  # up to the token that completed the stop string, none after
    assert kept < len(expected.output) and len(cut.choices[0].logprobs.token_logprobs) == kept
    assert TextModel(text_model).decode(expected.output[: kept - 1]).find(stop) < 0
    chat = api.chat.completions.create(
        model="model", messages=USER, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 3 for c in content)
    assert content[0].logprob == content[0].top_logprobs[0].logprob  # greedy: the top token


def test_concurrent_clients_each_get_their_own_reply(server, text_model):
    questions = ["北京", "上海的天气", "新闻", "体育比赛的结果", "经济", "科技公司", "学校", "医院"]
    api = client(server)

    def ask(question):
        messages = [{"role": "user", "content": question}]
        return api.chat.completions.create(model="model", messages=messages, max_tokens=10, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, questions))
    text = TextModel(text_model)
    for question, reply in zip(questions, replies, strict=True):
        expected = reference(text_model, text.chat_prompt([{"role": "user", "content": question}]), 10, True)
        assert reply.choices[0].message.content == text.decode(expected.output)


@pytest.mark.parametrize(
    "change, status, param",
    [
        (dict(model="other"), 404, "model"),
        (dict(max_tokens=0), 400, "max_tokens"),
        (dict(temperature="hot"), 400, "temperature"),
        (dict(n=2), 400, "n"),
        (dict(messages=[{"role": "robot", "content": "x"}]), 400, "messages"),
        (dict(messages=[{"role": "user", "content": "新闻" * 400}]), 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(server, change, status, param):
    request = {"model": "model", "messages": USER, "max_tokens": 4, **change}
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).chat.completions.create(**request)
    assert caught.value.status_code == status
    error = caught.value.body
    assert set(error) >= {"message", "type", "param", "code"} and error["param"] == param


def test_malformed_json_is_a_400(server):
    response = httpx.post(
        f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_a_client_that_disconnects_frees_its_row(server):
    body = {"model": "model", "messages": USER, "max_tokens": 200, "temperature": 1.0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i == 3:
                break  # leave mid-stream
    for _ in range(50):
        if httpx.get(f"{server}/health").json()["running"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(f"{server}/health").json()["running"] == 0


def test_a_full_queue_answers_429_and_the_api_key_is_checked(text_model):
    options = ("--max-batch", "1", "--max-waiting", "1", "--api-key", "secret", "--no-compile")
    process, url = start(text_model, *options)
    try:
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        api = OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0)
        assert [m.id for m in api.models.list()] == ["model"]

        def ask(_):
            try:
                api.chat.completions.create(model="model", messages=USER, max_tokens=60, temperature=1.0)
                return 200
            except openai.RateLimitError:
                return 429

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(ask, range(6)))
        assert 429 in statuses and 200 in statuses
    finally:
        stop(process)


def test_serve_refuses_a_bad_model_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ctlab.cli", "serve", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("ctlab: error:")
    assert json.dumps(result.stderr).count("\\n") == 1


def test_a_failing_step_answers_500_and_the_engine_recovers(text_model):
    """In process: the model fails once mid-request; that client gets a 500 in OpenAI's shape,
    the engine frees its rows, and the next request is answered as usual."""
    from fastapi.testclient import TestClient

    from ctlab.infer.server import make_app

    text = TextModel(text_model)
    engine = Engine(load_model(text_model), max_batch=2)
    app = make_app(engine, text, "model")
    body = {"model": "model", "messages": USER, "max_tokens": 8, "temperature": 0}
    forward = engine.model.forward
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a fault")
        return forward(*args, **kwargs)

    with TestClient(app) as http:
        engine.model.forward = failing
        broken = http.post("/v1/chat/completions", json=body)
        engine.model.forward = forward
        assert broken.status_code == 500 and broken.json()["error"]["type"] == "server_error"
        assert (engine.cache.lengths == 0).all() and engine.running == []
        fine = http.post("/v1/chat/completions", json=body)
    expected = reference(text_model, text.chat_prompt(USER), 8, chat=True)
    assert fine.status_code == 200 and fine.json()["choices"][0]["message"]["content"] == text.decode(expected.output)
