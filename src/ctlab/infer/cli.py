"""``ctlab generate``, ``ctlab chat`` and ``ctlab serve``: the engine from a terminal or over HTTP.

Argument parsing and the terminal loops live here; the engine options are declared once in
:mod:`ctlab.infer.options`, the server in :mod:`ctlab.infer.server`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctlab.args import positive_int
from ctlab.errors import UserError
from ctlab.infer.options import add_engine_arguments, add_sampling_arguments


def read_messages(value: str) -> list:
    """``--messages``: JSON text, or the path of a JSON file."""
    text = value
    if not value.lstrip().startswith("[") and Path(value).is_file():
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --messages {value}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--messages is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


def _generate(args: argparse.Namespace) -> int:
    from ctlab.infer.options import build_engine, sampling_params
    from ctlab.infer.text import TextStream

    if args.prompt_file is not None:
        try:
            prompt_text = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read --prompt-file {args.prompt_file}: {getattr(err, 'strerror', err)}") from None
    messages = read_messages(args.messages) if args.messages is not None else None
    engine, text = build_engine(args)
    if messages is not None:
        prompt = text.chat_prompt(messages)
    else:
        prompt = text.encode(args.prompt if args.prompt is not None else prompt_text)
    request = engine.add(prompt, sampling_params(args, text.stop_ids(chat=messages is not None)))
    stream = TextStream(text, args.stop)
    for token in engine.follow(request):
        piece = stream.push(token)
        if not args.json:
            print(piece, end="", flush=True)
        if stream.stopped:
            engine.cancel(request, "stop")
    tail = stream.finish()
    summary = {**request.summary(), "new_tokens": stream.kept}  # none after a stop string
    if stream.stopped:
        summary["finish_reason"] = "stop"
    if args.json:
        token_ids = request.output[: stream.kept]
        out = {"text": stream.text, "token_ids": token_ids, "prompt_token_ids": prompt, "stats": summary}
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(tail)
        print(stats_line(summary), file=sys.stderr)
    return 0


def stats_line(summary: dict) -> str:
    parts = [
        f"{summary['prompt_tokens']} prompt tokens",
        f"{summary['new_tokens']} new ({summary['finish_reason']})",
        f"{summary['tokens_per_second']} tokens/s",
        f"KV {summary['kv_bytes'] / 2**20:.2f} of {summary['full_kv_bytes'] / 2**20:.2f} MiB",
    ]
    if summary["acceptance_rate"] is not None:
        parts.append(f"acceptance {summary['acceptance_rate']:.0%}, {summary['tokens_per_forward']} tokens/forward")
    return "; ".join(parts)


def _chat(args: argparse.Namespace) -> int:
    from ctlab.infer.options import build_engine, sampling_params
    from ctlab.infer.text import TextStream

    engine, text = build_engine(args)
    params = sampling_params(args, text.stop_ids(chat=True))
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("ctlab chat: /reset starts over, /quit (or Ctrl-D) leaves", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        if line.strip() == "/quit":
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            print("(conversation reset)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            request = engine.add(text.chat_prompt(messages), params)
        except UserError as err:  # the conversation outgrew the context: say so and let the user reset
            print(f"ctlab: {err}; /reset to start over", file=sys.stderr)
            messages.pop()
            continue
        stream = TextStream(text, args.stop)
        for token in engine.follow(request):
            print(stream.push(token), end="", flush=True)
            if stream.stopped:
                engine.cancel(request, "stop")
        print(stream.finish(), flush=True)
        messages.append({"role": "assistant", "content": stream.text})


def _serve(args: argparse.Namespace) -> int:
    from ctlab.infer.server import serve

    return serve(args)


def register_generate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate a reply to one prompt with ctlab's engine: plain text (--prompt, --prompt-file) or chat "
        "messages through the tokenizer's chat template (--messages). Streams the text; --json prints one "
        "JSON object with the text, the token ids and the stats instead."
    )
    add_engine_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", metavar="TEXT")
    source.add_argument("--prompt-file", metavar="FILE")
    source.add_argument("--messages", metavar="JSON", help='[{"role": "user", "content": "..."}], or a JSON file')
    add_sampling_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object: text, token ids, stats")
    parser.set_defaults(handler=_generate)


def register_chat(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Chat with a model in the terminal: replies stream as they are generated, through the tokenizer's "
        "chat template. /reset starts a new conversation, /quit leaves."
    )
    add_engine_arguments(parser, compile=True)
    parser.add_argument("--system", metavar="TEXT", help="a system message that opens every conversation")
    add_sampling_arguments(parser)
    parser.set_defaults(handler=_chat)


def register_serve(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a model over an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions, "
        "/health). Concurrent requests share the model through continuous batching."
    )
    add_engine_arguments(parser, compile=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every /v1 request")
    parser.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together (8)")
    parser.add_argument("--max-waiting", type=positive_int, default=64, help="queued requests before 429 (64)")
    parser.add_argument("--model-name", help="the model id clients use (default: the folder's name)")
    parser.set_defaults(handler=_serve)
