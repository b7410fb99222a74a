"""``ctlab serve``: an OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

One engine thread steps the engine whenever it has work; HTTP handlers only queue requests
and relay tokens, so concurrent clients share the model through continuous batching. A full
queue answers 429; a client that goes away mid-stream cancels its request, which frees its
row at the next step. Errors use OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with 400 for a bad request (malformed JSON, wrong types, a prompt over the
context, max_tokens ≤ 0), 401 for a wrong API key, 404 for an unknown model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ctlab.errors import UserError
from ctlab.infer.engine import Engine, QueueFull
from ctlab.infer.request import Request
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.text import TextModel, TextStream


class EngineThread(threading.Thread):
    """Steps the engine while it has work; sleeps on an event otherwise."""

    def __init__(self, engine: Engine):
        super().__init__(daemon=True, name="ctlab-engine")
        self.engine = engine
        self.wake = threading.Event()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            if not self.engine.busy:
                self.wake.wait(0.1)
                self.wake.clear()
                continue
            try:
                self.engine.step()
            except Exception:  # a bug: end every request (their clients get a 500) and start clean
                traceback.print_exc()
                self.engine.abort("error")


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    model: str
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: dict | None = None


class ChatBody(_Body):
    messages: list[dict]
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionBody(_Body):
    prompt: str | list[int]
    max_tokens: Annotated[int, Field(gt=0)] | None = 16  # OpenAI's default for completions
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Literal[False] = False


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


# ---------------------------------------------------------------- the app


def make_app(engine: Engine, text: TextModel, model_name: str, api_key: str | None = None):
    worker = EngineThread(engine)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_):
        worker.start()
        yield
        worker.stopping = True
        worker.wake.set()

    app = FastAPI(title="ctlab", docs_url=None, redoc_url=None, lifespan=lifespan)

    def error(status, message, kind="invalid_request_error", param=None, code=None):
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(_, err: APIError):
        return error(err.status, err.message, err.kind, err.param, err.code)

    @app.exception_handler(Exception)
    async def _bug(_, err: Exception):
        traceback.print_exception(err)
        return error(500, f"internal error ({type(err).__name__}); see the server's log", "server_error")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, err: RequestValidationError):
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        if problem.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON")
        return error(400, f"{where}: {problem.get('msg')}", param=where or None)

    @app.middleware("http")
    async def _authorise(request: HTTPRequest, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return error(401, "invalid API key", "authentication_error", code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def _health():
        return {"status": "ok", "running": len(engine.running)}

    @app.get("/v1/models")
    async def _models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "ctlab"}
        return {"object": "list", "data": [card]}

    def check_model(body: _Body) -> None:
        if body.model != model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist (this server has {model_name!r})",
                param="model",
                code="model_not_found",
            )

    def submit(prompt: list[int], body: _Body, max_tokens: int | None, top_logprobs: int | None, loop):
        queue: asyncio.Queue = asyncio.Queue()
        params = {
            "max_new_tokens": max_tokens or engine.context,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "stop_token_ids": text.stop_ids(chat=isinstance(body, ChatBody)),
        }
        try:
            request = engine.add(
                prompt,
                SamplingParams(**params),
                top_logprobs=top_logprobs,
                listener=lambda token: loop.call_soon_threadsafe(queue.put_nowait, token),
            )
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry later", "rate_limit_error") from None
        except UserError as err:
            raise APIError(400, str(err), param="messages" if isinstance(body, ChatBody) else "prompt") from None
        worker.wake.set()
        return request, queue

    async def tokens(request: Request, queue: asyncio.Queue, stream: TextStream):
        """(text piece, indices of the tokens it completes) as tokens arrive, until the request
        ends or its text reaches a stop string; cancels the request if the client leaves."""
        pending: list[int] = []
        try:
            while True:
                token = await queue.get()
                if token is None:
                    tail = stream.finish()
                    if tail or pending:
                        yield tail, pending
                    return
                pending.append(stream.kept)
                piece = stream.push(token)
                if stream.stopped:
                    engine.cancel(request, "stop")
                    worker.wake.set()
                    yield piece, pending
                    return
                if piece:
                    yield piece, pending
                    pending = []
        finally:
            if not request.done:
                engine.cancel(request)
                worker.wake.set()

    def check_failed(request: Request) -> None:
        if request.finish_reason == "error":
            raise APIError(500, "the engine failed on this request; see the server's log", "server_error")

    def finish_reason(request: Request, stream: TextStream) -> str:
        return "stop" if stream.stopped or request.finish_reason == "stop" else "length"

    def usage(request: Request, stream: TextStream) -> dict:
        """Tokens the reply is made of (none after a stop string)."""
        return {
            "prompt_tokens": len(request.prompt),
            "completion_tokens": stream.kept,
            "total_tokens": len(request.prompt) + stream.kept,
        }

    def token_text(token: int) -> str:
        return text.tokenizer.decode([token])

    def chat_logprob(request: Request, index: int) -> dict:
        logprob, alternatives = request.logprobs[index]

        def entry(token: int, value: float) -> dict:
            return {"token": token_text(token), "logprob": value, "bytes": text.token_bytes(token)}

        return {**entry(request.output[index], logprob), "top_logprobs": [entry(t, v) for t, v in alternatives]}

    def stops(body: _Body) -> list[str]:
        return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])

    async def wait(request: Request, queue, stream, http: HTTPRequest) -> None:
        """Consume the reply; a client that closes the connection meanwhile cancels it."""
        generator = tokens(request, queue, stream)
        try:
            while True:
                waiter = asyncio.ensure_future(generator.__anext__())
                while not waiter.done():
                    await asyncio.wait([waiter], timeout=0.5)
                    if not waiter.done() and await http.is_disconnected():
                        waiter.cancel()
                        await asyncio.gather(waiter, return_exceptions=True)
                        raise APIError(499, "the client closed the connection")
                try:
                    waiter.result()
                except StopAsyncIteration:
                    return
        finally:
            await generator.aclose()

    def error_event() -> str:
        return sse(
            {
                "error": {
                    "message": "the engine failed on this request",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )

    @app.post("/v1/chat/completions")
    async def _chat(body: ChatBody, http: HTTPRequest):
        check_model(body)
        try:
            prompt = text.chat_prompt(body.messages)
        except UserError as err:
            raise APIError(400, str(err), param="messages") from None
        top = (body.top_logprobs or 0) if body.logprobs else None
        request, queue = submit(
            prompt, body, body.max_completion_tokens or body.max_tokens, top, asyncio.get_running_loop()
        )
        stream = TextStream(text, stops(body))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        if not body.stream:
            await wait(request, queue, stream, http)
            check_failed(request)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": stream.text},
                "finish_reason": finish_reason(request, stream),
                "logprobs": None,
            }
            if top is not None:
                choice["logprobs"] = {"content": [chat_logprob(request, i) for i in range(stream.kept)]}
            return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(request, stream)}

        def chunk(delta, reason=None, logprobs=None):
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
            return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for piece, indices in tokens(request, queue, stream):
                    logprobs = None if top is None else {"content": [chat_logprob(request, i) for i in indices]}
                    yield chunk({"content": piece}, logprobs=logprobs)
                if request.finish_reason == "error":
                    yield error_event()
                else:
                    yield chunk({}, finish_reason(request, stream))
                    if (body.stream_options or {}).get("include_usage"):
                        yield sse(
                            {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(request, stream)}
                        )
                yield "data: [DONE]\n\n"
            finally:  # also when the client leaves before the first token
                if not request.done:
                    engine.cancel(request)
                    worker.wake.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def _completions(body: CompletionBody, http: HTTPRequest):
        check_model(body)
        prompt = list(body.prompt) if isinstance(body.prompt, list) else text.encode(body.prompt)
        request, queue = submit(prompt, body, body.max_tokens, body.logprobs, asyncio.get_running_loop())
        stream = TextStream(text, stops(body))
        head = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model_name,
            "object": "text_completion",
        }

        def logprobs_of(indices: list[int], offset: int) -> dict | None:
            """OpenAI's completion logprobs of the tokens at ``indices``, their text starting at
            character ``offset`` of the reply."""
            if body.logprobs is None:
                return None
            texts = [token_text(request.output[i]) for i in indices]
            offsets = [offset + sum(len(t) for t in texts[:j]) for j in range(len(texts))]
            return {
                "tokens": texts,
                "token_logprobs": [request.logprobs[i][0] for i in indices],
                "top_logprobs": [{token_text(t): v for t, v in request.logprobs[i][1]} for i in indices],
                "text_offset": offsets,
            }

        if not body.stream:
            await wait(request, queue, stream, http)
            check_failed(request)
            choice = {
                "index": 0,
                "text": stream.text,
                "finish_reason": finish_reason(request, stream),
                "logprobs": logprobs_of(list(range(stream.kept)), 0),
            }
            return {**head, "choices": [choice], "usage": usage(request, stream)}

        async def events():
            try:
                sent = 0
                async for piece, indices in tokens(request, queue, stream):
                    choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": logprobs_of(indices, sent)}
                    sent += len(piece)
                    yield sse({**head, "choices": [choice]})
                if request.finish_reason == "error":
                    yield error_event()
                else:
                    reason = finish_reason(request, stream)
                    yield sse(
                        {**head, "choices": [{"index": 0, "text": "", "finish_reason": reason, "logprobs": None}]}
                    )
                    if (body.stream_options or {}).get("include_usage"):
                        yield sse({**head, "choices": [], "usage": usage(request, stream)})
                yield "data: [DONE]\n\n"
            finally:
                if not request.done:
                    engine.cancel(request)
                    worker.wake.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted (Ctrl-C)."""
    import uvicorn

    from ctlab.infer.options import build_engine

    engine, text = build_engine(args, max_batch=args.max_batch, max_waiting=args.max_waiting)
    if engine.compile:  # the programs compile here, before the first client waits on them
        engine.generate([[0, 0, 0]], SamplingParams(max_new_tokens=2, ignore_eos=True))
    name = args.model_name or Path(args.model).resolve().name
    app = make_app(engine, text, name, args.api_key)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({err.strerror})") from None
    host, port = sock.getsockname()[:2]
    print(f"serving {name} on http://{host}:{port} (OpenAI API under /v1; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
    print("stopped", file=sys.stderr)
    return 0
