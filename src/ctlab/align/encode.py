"""Conversations and preference pairs as token ids through the tokenizer's chat template.

A reply's tokens are found the way any template allows, generation tags or not: render the
turns before it with the generation prompt, render them with the reply, and the reply is what
the second adds after the longest common prefix of the two (its text, the end-of-turn token
and whatever separator the template puts after it). trl's DPOTrainer cuts its completions the
same way, so both train on the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ctlab.align.records import Conversation, Malformed, Preference
from ctlab.errors import UserError

TrainOn = Literal["assistant", "all"]  # loss on the assistant's turns only, or on every token


@dataclass
class Encoded:
    """ids (T,) int64, and targets (T,) bool: True where the token is one the loss predicts."""

    ids: np.ndarray
    targets: np.ndarray


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ChatEncoder:
    """A tokenizer (transformers, with a chat template) turning records into :class:`Encoded`."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template: chat training needs one")
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], generation_prompt: bool = False) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        except Exception:  # jinja's TemplateError and the template's own raise_exception
            raise Malformed("refused by the chat template") from None
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def conversation(self, record: Conversation, train_on: TrainOn = "assistant") -> Encoded:
        """Every turn of the conversation; targets on each assistant reply (or on every token).
        :class:`Malformed` when the template refuses the record or leaves a reply without
        tokens of its own."""
        messages = record.messages
        ids = self.render(messages)
        targets = np.zeros(len(ids), dtype=bool)
        if train_on == "all":
            targets[1:] = True
            return Encoded(np.asarray(ids, dtype=np.int64), targets)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:turn], generation_prompt=True)
            upto = self.render(messages[: turn + 1])
            start = min(_common_prefix(before, upto), _common_prefix(upto, ids))
            end = _common_prefix(upto, ids)
            if end <= start:  # the template renders this turn otherwise once later turns follow
                raise Malformed("an assistant turn the template does not keep as written")
            targets[start:end] = True
        return Encoded(np.asarray(ids, dtype=np.int64), targets)

    def preference(self, record: Preference) -> tuple[Encoded, Encoded]:
        """prompt + chosen and prompt + rejected, targets on the answers only."""
        prompt = self.render(record.prompt, generation_prompt=True)
        chosen, rejected = self.render(record.prompt + record.chosen), self.render(record.prompt + record.rejected)
        shared = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        encoded = []
        for ids in (chosen, rejected):
            targets = np.zeros(len(ids), dtype=bool)
            targets[shared:] = True
            encoded.append(Encoded(np.asarray(ids, dtype=np.int64), targets))
        return encoded[0], encoded[1]
