"""Text around the engine: a model folder's tokenizer, chat prompts, stop tokens, streamed text.

The engine sees token ids only; the commands (generate, chat, serve) meet text here. The
tokenizer is the model folder's own, read by transformers (so its chat template applies);
streamed text is decoded incrementally, holding back a partial UTF-8 character and any tail
that may be the start of a stop string.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctlab.errors import UserError
from ctlab.runs import latest_checkpoint

END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")  # ctlab, Qwen, Llama 3, GPT-style


class TextModel:
    """A model folder's tokenizer and the token ids that end a reply."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        self.folder = latest_checkpoint(folder)
        if not (self.folder / "tokenizer.json").is_file() and not (self.folder / "tokenizer_config.json").is_file():
            raise UserError(f"{folder} has no tokenizer (tokenizer.json): text needs the model's tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        except (OSError, ValueError) as err:
            raise UserError(f"{folder}: its tokenizer does not load ({str(err).splitlines()[0]})") from None
        self.generation_eos: list[int] = []  # the end tokens of generation_config.json, if any
        config = self.folder / "generation_config.json"
        if config.is_file():
            try:
                eos = json.loads(config.read_text()).get("eos_token_id")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                raise UserError(f"{config} is not a JSON object") from None
            self.generation_eos = [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
        self._byte_of: dict[str, int] = {}  # byte-level BPE: the character standing for each byte
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and "ByteLevel" in json.dumps(json.loads(backend.to_str()).get("decoder")):
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's begin-of-text token, if it adds one)."""
        return list(self.tokenizer(text).input_ids)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` through the chat template, ending where the assistant's
        reply begins (a :class:`UserError` for malformed messages or no template)."""
        check_messages(messages)
        if not self.tokenizer.chat_template:
            raise UserError(f"{self.folder}'s tokenizer has no chat template: use --prompt")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # jinja's TemplateError and the template's own raise_exception
            raise UserError(f"the chat template refuses these messages ({str(err).splitlines()[0]})") from None
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def stop_ids(self, chat: bool) -> list[int]:
        """The tokenizer's end-of-text token, the model's generation config's, and for chat the
        end-of-turn tokens the tokenizer knows."""
        ids = set(self.generation_eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if chat:
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[token] for token in END_OF_TURN if token in vocab)
        return sorted(ids)

    def token_bytes(self, token: int) -> list[int]:
        """The bytes of one token (a byte-level token may hold part of a character)."""
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if self._byte_of and piece and all(c in self._byte_of for c in piece):
            return [self._byte_of[c] for c in piece]
        return list(self.tokenizer.decode([token]).encode())

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def check_messages(messages) -> None:
    """A :class:`UserError` unless ``messages`` is a non-empty list of {role, content} strings."""
    if not isinstance(messages, list) or not messages:
        raise UserError("messages must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise UserError(f"message {i}: needs a string 'content'")
        if message.get("role") not in ("system", "user", "assistant"):
            raise UserError(f"message {i}: role must be system, user or assistant, not {message.get('role')!r}")


class TextStream:
    """Text of a growing list of token ids, given out as it becomes final.

    ``push`` returns the new final text: text ending in a partial character (U+FFFD) or in
    what could begin a stop string waits for the next token. Once a stop string appears the
    text ends before the earliest one, ``stopped`` is set and ``kept`` is the number of tokens
    that count (up to the one that completed the stop string; later ones are ignored).
    """

    def __init__(self, text_model: TextModel, stop: list[str] | None = None):
        self.text_model = text_model
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # final text given out so far
        self.stopped = False

    @property
    def kept(self) -> int:
        return len(self.ids)

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        return self._advance(final=False)

    def finish(self) -> str:
        """The text still held back, once no more tokens come."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        decoded = self.text_model.decode(self.ids)
        found = [decoded.find(stop, max(len(self.text) - len(stop) + 1, 0)) for stop in self.stop]
        found = [at for at in found if at >= 0]
        if found:
            decoded, self.stopped = decoded[: min(found)], True
        elif not final:
            if decoded.endswith("\ufffd"):
                return ""
            decoded = decoded[: len(decoded) - held_back(decoded, self.stop)]
        piece = decoded[len(self.text) :]
        self.text += piece
        return piece


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest
