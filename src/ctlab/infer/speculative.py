"""Speculative decoding: a cheap guess of the next tokens, checked by the model in one forward.

Every strategy drafts up to k tokens per running row and returns the target's logits at the
row's last token and at each draft; :func:`accept`, the one acceptance routine, keeps a prefix
of the drafts and adds one token of the target's. With the standard rule (:func:`verify`:
accept a draft d with probability min(1, p(d)/q(d)); on rejection draw from max(0, p − q),
normalised; after k acceptances draw a bonus token from p) the output follows the target's
distribution exactly. With plain greedy parameters p and q are one-hot at the argmaxes, so the
rule keeps the drafts that equal the target's argmax and adds the argmax after them: token for
token the plain greedy output, found from the argmaxes alone (no distribution is built).

Strategies:

- ``draft``: a smaller model with the same tokenizer, with its own cache.
- ``layerskip`` (arXiv 2404.16710): the model's first E layers and the shared head draft;
  the verification runs layers [E, L) on the saved exit-layer hidden states of all drafts,
  on the same cache, so the draft's entries of layers below E are the target's (nothing is
  computed twice).
- ``lookup``: prompt lookup: the tokens that followed the latest earlier occurrence of the
  context's last n-gram (n from ``max_ngram`` down to 1); the draft distribution is one-hot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ctlab.errors import UserError
from ctlab.infer.layout import decode_layout
from ctlab.infer.sampling import next_token_distribution
from ctlab.model.cache import KVCache, Observer
from ctlab.model.decoder import Decoder

if TYPE_CHECKING:
    from ctlab.infer.engine import Engine
    from ctlab.infer.request import Request


def draw(distribution: torch.Tensor, generator: torch.Generator) -> int:
    """A token from an unnormalised ``distribution`` (V,); a one-hot one needs no draw."""
    top = int(distribution.argmax())
    total = distribution.sum()
    if distribution[top] == total:
        return top
    return int(torch.multinomial(distribution / total, 1, generator=generator))


def verify(target: torch.Tensor, draft: torch.Tensor, tokens: list[int], generator: torch.Generator) -> tuple[int, int]:
    """How many of the n drafted ``tokens`` to keep and the token that follows them, from the
    target's distributions (n + 1, V) at the last token and each draft and the draft's
    distributions (n, V) the drafts were drawn from."""
    for i, token in enumerate(tokens):
        p, q = float(target[i, token]), float(draft[i, token])
        if p >= q:
            continue
        if p > 0 and float(torch.rand((), generator=generator, device=generator.device)) * q < p:
            continue
        return i, draw((target[i] - draft[i]).clamp(min=0), generator)
    return len(tokens), draw(target[len(tokens)], generator)


def plain_greedy(params) -> bool:
    """Whether ``params`` choose the argmax of the logits themselves (greedy, no penalty)."""
    return params.greedy and params.repetition_penalty == 1


def accept(
    logits: torch.Tensor, draft: torch.Tensor | None, request, context: list[int], tokens: list[int]
) -> tuple[int, int, torch.Tensor | None]:
    """How many of the n drafted ``tokens`` after ``context`` to keep, the token that follows
    them, and the target's distributions (n + 1, V) they were judged by, from the target's
    logits (≥ n + 1, V) at the last token and each draft and the draft's distributions (n, V)
    (:func:`verify`). A :func:`plain_greedy` request (its ``draft`` None) compares the drafts
    with the logits' argmaxes, which is what :func:`verify` does with one-hot distributions;
    its distributions are then None."""
    if plain_greedy(request.params):
        best = logits[: len(tokens) + 1].argmax(-1).tolist()
        kept = next((i for i, token in enumerate(tokens) if token != best[i]), len(tokens))
        return kept, best[kept], None
    target = target_distributions(logits, request, context, tokens)
    return (*verify(target, draft, tokens, request.generator), target)


def target_distributions(logits: torch.Tensor, request, context: list[int], tokens: list[int]) -> torch.Tensor:
    """The distributions (n + 1, V) a model's logits (≥ n + 1, V) give after ``context`` and after
    each of the n drafted ``tokens``, under ``request``'s sampling parameters."""
    return torch.stack(
        [next_token_distribution(logits[i], request.params, context + tokens[:i]) for i in range(len(tokens) + 1)]
    )


class Speculator:
    """Drafts tokens for the running rows of an engine and gives the target's logits at them."""

    name = "none"
    observes_prefill = False  # True: prefill_observer watches each row's prompt (rows prefilled one at a time)

    def __init__(self, num_speculations: int = 4):
        if num_speculations < 1:
            raise UserError("--num-speculations must be at least 1")
        self.num_speculations = num_speculations

    def prepare(self, engine: Engine) -> None:
        """Check the engine's model and settings and allocate what the strategy needs."""
        if engine.policy.name in ("streaming", "corm"):
            raise UserError(f"speculative decoding does not combine with the {engine.policy.name} policy")

    def prefill_observer(self, cache: KVCache, prompt_length: int) -> Observer | None:
        """What to call with each layer's queries while a row's prompt is prefilled."""
        return None

    def on_prefill(self, engine: Engine, row: int, prompt: list[int]) -> None:
        """A request's prompt entered row ``row`` of the engine's cache."""

    def round(
        self, engine: Engine, running: list[Request], k: int
    ) -> tuple[list[list[int]], list[torch.Tensor | None], torch.Tensor]:
        """Up to ``k`` drafts per row, the distributions (n_r, V) each row's drafts came from
        (None for a :func:`plain_greedy` row), and the target's logits (B, k + 1, V) at each
        row's last token and its drafts (the engine's cache then holds entries for all of them:
        it crops them after verifying)."""
        raise NotImplementedError

    def after_round(self, engine: Engine, running: list[Request], ends: torch.Tensor) -> None:
        """The engine kept each row's entries below ``ends`` (B,)."""

    def move_row(self, source: int, target: int) -> None:
        pass

    def clear_row(self, row: int) -> None:
        pass


def target_logits(engine: Engine, running: list[Request], drafts: list[list[int]], k: int) -> torch.Tensor:
    """The target's logits (B, k + 1, V) at each row's last token and drafts (shorter drafts
    padded: what follows them is cropped)."""
    tokens = [[r.output[-1], *d, *[0] * (k - len(d))] for r, d in zip(running, drafts, strict=True)]
    view = engine.cache.rows(0, len(running))
    return engine.model(torch.tensor(tokens, device=engine.device), cache=view).logits


def draft_from(logits: torch.Tensor, running: list[Request], drafts: list[list[int]]) -> list[torch.Tensor | None]:
    """Each row's draft distribution for logits (B, V) (None for a :func:`plain_greedy` row,
    which takes the argmax); the drawn tokens are appended to ``drafts``."""
    distributions = []
    best = logits.argmax(-1).tolist()
    for request, row_logits, tokens, top in zip(running, logits, drafts, best, strict=True):
        if plain_greedy(request.params):
            tokens.append(top)
            distributions.append(None)
            continue
        q = next_token_distribution(row_logits, request.params, request.prompt + request.output + tokens)
        tokens.append(draw(q, request.generator))
        distributions.append(q)
    return distributions


def prefill_draft(model: Decoder, cache: KVCache, prompt: list[int], chunk: int, after_chunk=None) -> None:
    """Prefill a draft ``model``'s one-row ``cache`` with ``prompt`` in chunks (no logits: the
    target makes the first token); ``after_chunk(cache)`` runs after each (a streaming
    cache evicts there)."""
    device = model.norm.weight.device
    for begin in range(0, len(prompt), chunk):
        ids = torch.tensor([prompt[begin : begin + chunk]], device=device)
        model.run_layers(model.embed_tokens(ids), cache=cache)
        if after_chunk is not None:
            after_chunk(cache)


def catch_up(model: Decoder, cache: KVCache, sequences: list[list[int]]) -> None:
    """Feed a draft ``model`` the tokens of each row's sequence its ``cache`` has not seen, all
    but the last (a rejected draft's replacement, the target's bonus token), in one forward:
    rows with fewer are right-padded and the padding's entries cropped."""
    seen = cache.end[0].tolist()
    missing = [sequence[start:-1] for sequence, start in zip(sequences, seen, strict=True)]
    width = max(map(len, missing))
    if width == 0:
        return
    tokens = torch.tensor([m + [0] * (width - len(m)) for m in missing], device=model.norm.weight.device)
    model.run_layers(model.embed_tokens(tokens), cache=cache)  # their entries only: no logits
    cache.crop(torch.tensor([start + len(m) for start, m in zip(seen, missing, strict=True)]))


def stacked(rows: list[list[torch.Tensor | None]], vocab: int, device) -> list[torch.Tensor | None]:
    """Each row's draft distributions as one (n, V) tensor; None for a row of plain greedy drafts."""
    return [
        None if any(q is None for q in r) else torch.stack(r) if r else torch.zeros(0, vocab, device=device)
        for r in rows
    ]


class DraftModel(Speculator):
    name = "draft"

    def __init__(self, draft: Decoder, num_speculations: int = 4):
        super().__init__(num_speculations)
        self.draft = draft.eval()
        self.cache: KVCache | None = None

    def prepare(self, engine: Engine) -> None:
        super().prepare(engine)
        if self.draft.config.vocab_size != engine.model.config.vocab_size:
            raise UserError(
                f"the draft model's vocabulary ({self.draft.config.vocab_size:,}) is not the model's "
                f"({engine.model.config.vocab_size:,}): a draft needs the same tokenizer"
            )
        if self.draft.config.max_position_embeddings < engine.context:
            raise UserError(
                f"the draft model's context ({self.draft.config.max_position_embeddings:,}) is shorter "
                f"than the engine's ({engine.context:,})"
            )
        decode_layout(self.draft, engine.compile)
        self.cache = KVCache.for_model(self.draft, engine.max_batch, engine.context + engine.prefill_chunk)

    def on_prefill(self, engine: Engine, row: int, prompt: list[int]) -> None:
        prefill_draft(self.draft, self.cache.rows(row, row + 1), prompt, engine.prefill_chunk)

    def round(self, engine, running, k):
        count = len(running)
        view = self.cache.rows(0, count)
        device = self.draft.norm.weight.device
        catch_up(self.draft, view, [r.prompt + r.output for r in running])
        drafts: list[list[int]] = [[] for _ in running]
        distributions: list[list[torch.Tensor]] = [[] for _ in running]
        last = torch.tensor([[r.output[-1]] for r in running], device=device)
        for _ in range(k):
            logits = self.draft(last, cache=view).logits[:, -1]
            for row, q in enumerate(draft_from(logits, running, drafts)):
                distributions[row].append(q)
            last = torch.tensor([[d[-1]] for d in drafts], device=device)
        vocab = engine.model.config.vocab_size
        return drafts, stacked(distributions, vocab, engine.device), target_logits(engine, running, drafts, k)

    def after_round(self, engine, running, ends):
        self.cache.rows(0, len(running)).crop(ends)

    def move_row(self, source: int, target: int) -> None:
        self.cache.move_row(source, target)

    def clear_row(self, row: int) -> None:
        self.cache.clear_row(row)


class LayerSkip(Speculator):
    name = "layerskip"

    def __init__(self, exit_layer: int, num_speculations: int = 6):
        super().__init__(num_speculations)
        self.exit_layer = exit_layer

    def prepare(self, engine: Engine) -> None:
        super().prepare(engine)
        layers = engine.model.config.num_layers
        if not 1 <= self.exit_layer < layers:
            raise UserError(f"--exit-layer must be between 1 and {layers - 1} (the model has {layers} layers)")

    def round(self, engine, running, k):
        model, view = engine.model, engine.cache.rows(0, len(running))
        drafts: list[list[int]] = [[] for _ in running]
        distributions: list[list[torch.Tensor]] = [[] for _ in running]
        last = torch.tensor([[r.output[-1]] for r in running], device=engine.device)
        exits = []  # the exit layer's output for the last token and each draft: layer E's input
        for i in range(k + 1):
            if i == k:  # the last draft's entries below E; its logits are the verification's
                exits.append(model.run_layers(model.embed_tokens(last), cache=view, stop=self.exit_layer).hidden)
                break
            hidden, logits = model.exit_after(model.embed_tokens(last), view, stop=self.exit_layer)
            exits.append(hidden)
            for row, q in enumerate(draft_from(logits[:, -1], running, drafts)):
                distributions[row].append(q)
            last = torch.tensor([[d[-1]] for d in drafts], device=engine.device)
        _, logits = model.exit_after(torch.cat(exits, dim=1), view, start=self.exit_layer)
        vocab = model.config.vocab_size
        return drafts, stacked(distributions, vocab, engine.device), logits


class PromptLookup(Speculator):
    name = "lookup"

    def __init__(self, num_speculations: int = 10, max_ngram: int = 3):
        super().__init__(num_speculations)
        if max_ngram < 1:
            raise UserError("the lookup n-gram must be at least 1 token")
        self.max_ngram = max_ngram

    def lookup(self, context: list[int], k: int) -> list[int]:
        """The ≤ k tokens after the latest earlier occurrence of the longest matching suffix."""
        for n in range(min(self.max_ngram, len(context) - 1), 0, -1):
            suffix = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == suffix:
                    return context[start + n : start + n + k]
        return []

    def round(self, engine, running, k):
        vocab = engine.model.config.vocab_size
        drafts = [self.lookup(r.prompt + r.output, k) if k else [] for r in running]
        one_hot = [
            None
            if plain_greedy(r.params)
            else torch.nn.functional.one_hot(torch.tensor(d, dtype=torch.long), vocab).float().to(engine.device)
            for r, d in zip(running, drafts, strict=True)
        ]
        return drafts, one_hot, target_logits(engine, running, drafts, k)
