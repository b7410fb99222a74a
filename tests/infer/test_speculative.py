"""Speculative decoding: every strategy's greedy output is the plain greedy output (dense and
MoE, rows of different lengths), the acceptance rule leaves the target's distribution
unchanged (statistically, on a small vocabulary), and the strategies' counters add up."""

from types import SimpleNamespace

import pytest
import torch
from infer_models import VOCAB, tiny_model

from ctlab.errors import UserError
from ctlab.infer.engine import Engine
from ctlab.infer.policies import SnapKV, StreamingCache
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.speculative import DraftModel, LayerSkip, PromptLookup, accept, target_distributions, verify
from ctlab.infer.triforce import TriForce
from ctlab.model.decoder import Decoder

GREEDY = SamplingParams(max_new_tokens=14, ignore_eos=True)


def prompts(*lengths, vocab=VOCAB):
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def repetitive(length):
    """A prompt that repeats a phrase: prompt lookup finds its continuations."""
    phrase = prompts(7)[0]
    return (phrase * (length // 7 + 1))[:length]


def truncated(model, layers):
    """A smaller model that agrees with ``model`` often: its first ``layers`` layers and its head."""
    draft = Decoder(model.config.replace(num_layers=layers)).eval()
    state = {
        k: v for k, v in model.state_dict().items() if not k.startswith("layers.") or int(k.split(".")[1]) < layers
    }
    draft.load_state_dict(state)
    return draft


def strategies(model):
    draft = truncated(model, 3)
    return {
        "draft": DraftModel(draft, num_speculations=3),
        "layerskip": LayerSkip(exit_layer=2, num_speculations=4),
        "lookup": PromptLookup(num_speculations=5),
    }


SHAPES = {"dense": dict(num_kv_heads=2), "moe": dict(ffn="moe", num_kv_heads=2)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("strategy", ["draft", "layerskip", "lookup"])
def test_greedy_speculation_is_plain_greedy(shape, strategy):
    model = tiny_model(**SHAPES[shape], num_layers=4)
    batch = prompts(6, 13, 9) + [repetitive(30)]
    plain = [r.output for r in Engine(model, max_batch=3).generate(batch, GREEDY)]
    speculator = strategies(model)[strategy]
    engine = Engine(model, max_batch=3, speculator=speculator)
    done = engine.generate(batch, GREEDY)
    assert [r.output for r in done] == plain
    assert all(r.drafted > 0 for r in done) or strategy == "lookup"
    assert sum(r.accepted for r in done) > 0  # some drafts were kept, so the bookkeeping was exercised


def test_a_perfect_draft_is_always_accepted():
    model = tiny_model(num_kv_heads=2)
    engine = Engine(model, speculator=DraftModel(model, num_speculations=4))
    request = engine.generate(prompts(10), SamplingParams(max_new_tokens=21, ignore_eos=True))[0]
    assert request.acceptance_rate == 1.0
    assert request.steps == 4 and request.tokens_per_forward == 21 / 5  # 1 + 4 rounds of 4 drafts + 1


def test_lookup_accepts_continuations_found_in_the_prompt():
    model = tiny_model(num_kv_heads=2)
    prompt = repetitive(60)
    plain = Engine(model).generate([prompt], GREEDY)[0]
    speculative = Engine(model, speculator=PromptLookup(num_speculations=6)).generate([prompt], GREEDY)[0]
    assert speculative.output == plain.output
    assert PromptLookup(max_ngram=2).lookup([1, 2, 3, 9, 1, 2, 3, 7, 1, 2], 3) == [3, 7, 1]
    assert PromptLookup().lookup([4, 5, 6], 3) == []


def test_layerskip_reuses_the_draft_entries_of_the_lower_layers():
    """A round drafts k tokens through layers [0, E), then runs layers [E, L) once on k + 1
    tokens: the lower layers see k + 1 single-token forwards and the upper ones one forward."""
    model = tiny_model(num_kv_heads=2, num_layers=4)
    calls = {i: [] for i in range(4)}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda module, args, out, i=i: calls[i].append(args[0].shape[1]))
    engine = Engine(model, speculator=LayerSkip(exit_layer=2, num_speculations=3))
    request = engine.generate(prompts(8), SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    assert calls[0] == calls[1] and calls[2] == calls[3]
    prefill, *rounds = calls[2]
    assert prefill == 8 and calls[0][0] == 8 and len(rounds) == request.steps
    assert rounds[0] == 4 and all(1 <= r <= 4 for r in rounds)  # the last token and up to 3 drafts, at once
    assert calls[0][1:] == [1] * sum(rounds)  # below the exit: one token at a time, never again


# ---------------------------------------------------------------- the acceptance rule


def test_verify_leaves_the_target_distribution_unchanged():
    """Drafts drawn from q, verified against p: the first two output tokens are distributed as
    p (each position its own p), whatever q is."""
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 5, generator=generator) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(2, 5, generator=generator) * 1.5, dim=-1)
    trials = 20000
    first = torch.zeros(5)
    second = torch.zeros(5)
    seconds = 0
    for _ in range(trials):
        tokens = [int(torch.multinomial(q[i], 1, generator=generator)) for i in range(2)]
        accepted, token = verify(p, q, tokens, generator)
        out = tokens[:accepted] + [token]
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
            seconds += 1
    assert (first / trials - p[0]).abs().max() < 0.015  # ~4 standard errors
    assert (second / seconds - p[1]).abs().max() < 0.03


def test_greedy_verification_needs_no_randomness():
    one_hot = torch.eye(4)
    p = one_hot[[2, 1, 3]]
    assert verify(p, one_hot[[2, 0]], [2, 0], None) == (1, 1)
    assert verify(p, one_hot[[2, 1]], [2, 1], None) == (2, 3)


def test_plain_greedy_acceptance_is_verify_on_the_greedy_distributions():
    """The argmax comparison a plain greedy request takes keeps and adds what the rule does with
    the distributions greedy sampling gives (ties included: small integer logits); a request
    with a repetition penalty takes the distributions themselves."""
    generator = torch.Generator().manual_seed(3)
    plain = SimpleNamespace(params=SamplingParams(), generator=generator)
    penalised = SimpleNamespace(params=SamplingParams(repetition_penalty=1.3), generator=generator)
    context = [1, 2, 2]
    for trial in range(200):
        logits = torch.randint(0, 4, (5, 6), generator=generator).float()
        best = logits.argmax(-1)
        tokens = [int(best[i]) if torch.rand((), generator=generator) < 0.7 else trial % 6 for i in range(4)]
        drafts = torch.nn.functional.one_hot(torch.tensor(tokens), 6).float()
        for request in (plain, penalised):
            target = target_distributions(logits, request, context, tokens)
            kept, token, distributions = accept(logits, None if request is plain else drafts, request, context, tokens)
            assert (kept, token) == verify(target, drafts, tokens, None)
            assert distributions is None if request is plain else torch.equal(distributions, target)


@pytest.mark.parametrize("strategy", ["draft", "triforce"])
def test_sampled_speculation_keeps_the_models_distribution(strategy):
    """On a 6-token vocabulary, sampling with a draft model that disagrees with the target and
    plain sampling give the same distribution of the third new token — a draft whenever the
    first round keeps both of its drafts — over 2000 seeded requests each, while the draft's
    own distribution is far from it (an accept-everything rule fails here). TriForce's middle
    level sees a retrieval cache of 8 of the prompt's 40 entries."""
    shape = dict(vocab_size=6, num_kv_heads=2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model, draft = tiny_model(**shape), tiny_model(**shape)
    prompt = [1, 4, 2, 5, 3] * 8

    def third_tokens(model, speculator=None):
        engine = Engine(model, max_batch=64, speculator=speculator)
        requests = [
            engine.add(prompt, SamplingParams(max_new_tokens=4, temperature=1.0, seed=seed)) for seed in range(2000)
        ]
        engine.run()
        assert all(len(r.output) == 4 for r in requests)
        return torch.bincount(torch.tensor([r.output[2] for r in requests]), minlength=6).float() / 2000

    if strategy == "draft":
        speculator = DraftModel(draft, num_speculations=2)
    else:
        speculator = TriForce(draft, budget=8, chunk=4, num_speculations=2, draft_speculations=1, sinks=2, recent=6)
    plain = third_tokens(model)
    speculative = third_tokens(model, speculator)
    assert 0.5 * (plain - speculative).abs().sum() < 0.06  # total variation; ~0.03 expected by chance
    assert 0.5 * (plain - third_tokens(draft)).abs().sum() > 0.12  # the draft alone is another distribution


# ---------------------------------------------------------------- settings


def test_bad_settings_are_one_line_errors():
    model = tiny_model(num_layers=3)
    with pytest.raises(UserError, match="between 1 and 2"):
        Engine(model, speculator=LayerSkip(exit_layer=3))
    with pytest.raises(UserError, match="same tokenizer"):
        Engine(model, speculator=DraftModel(tiny_model(vocab_size=400)))
    with pytest.raises(UserError, match="does not combine with the streaming policy"):
        Engine(model, kv_policy=StreamingCache(recent=16), speculator=PromptLookup())
    with pytest.raises(UserError, match="at least 1"):
        LayerSkip(exit_layer=1, num_speculations=0)
    Engine(model, kv_policy=SnapKV(capacity=64, window=8), speculator=PromptLookup())  # prefill-only: fine
