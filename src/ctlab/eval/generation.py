"""Replies of a model to many chat prompts, batched through the engine, with a progress bar.

Every generative evaluation (sample designs, constraints) and the preference-pair builder ask
the engine the same way: messages through the chat template, the engine's continuous batching
over all of them, replies decoded up to the end-of-turn token. A prompt that leaves no room
for a reply in the engine's context is answered with an empty reply and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tqdm import tqdm

from ctlab.infer.sampling import SamplingParams


@dataclass
class Replies:
    texts: list[str]
    too_long: int  # prompts left without a reply: no room in the context


def chat_replies(
    engine, text_model, conversations: list[list[dict]], params: SamplingParams | list[SamplingParams], progress=True
) -> Replies:
    """The reply to each conversation (its last turn a user's), in order; ``params``: one for
    all, or one per conversation (their own seeds, say)."""
    prompts = [text_model.chat_prompt(messages) for messages in conversations]
    each = params if isinstance(params, list) else [params] * len(prompts)
    ends = text_model.stop_ids(chat=True)
    requests = {}
    for i, (prompt, setting) in enumerate(zip(prompts, each, strict=True)):
        if len(prompt) + setting.max_new_tokens <= engine.context:
            setting = replace(setting, stop_token_ids=sorted(set(setting.stop_token_ids) | set(ends)))
            requests[i] = engine.add(prompt, setting)
    bar = tqdm(total=len(requests), desc="generate", unit="reply", disable=not progress)
    finished = 0
    while engine.busy:
        engine.step()
        now = sum(r.done for r in requests.values())
        bar.update(now - finished)
        finished = now
    bar.close()
    texts = [text_model.decode(requests[i].output) if i in requests else "" for i in range(len(prompts))]
    return Replies(texts, len(prompts) - len(requests))
