"""TriForce: the retrieval cache keeps chunk 0, the last chunk and the best-matching chunks
(scored by hand here), and greedy TriForce output is the plain greedy output, on dense and
MoE targets, for a prompt longer than the budget and one that fits it."""

import pytest
import torch
from infer_models import VOCAB, tiny_model

from ctlab.errors import UserError
from ctlab.infer.engine import Engine
from ctlab.infer.policies import SnapKV
from ctlab.infer.sampling import SamplingParams
from ctlab.infer.triforce import TriForce, retrieval_keep
from ctlab.model.cache import EMPTY

GREEDY = SamplingParams(max_new_tokens=16, ignore_eos=True)


def prompt(length, seed=0):
    return torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_retrieval_keeps_first_last_and_best_chunks():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 37, 4, generator=generator)  # 2 KV heads, 37 entries: 5 chunks of 8 (the last of 5)
    query = torch.randn(4, 4, generator=generator)  # 4 query heads: groups of 2
    keep = retrieval_keep(query, keys, budget=24, chunk=8)  # 3 chunks
    for head in range(2):
        means = torch.stack([keys[head, c * 8 : c * 8 + 8].mean(0) for c in range(5)])
        scores = (query[2 * head : 2 * head + 2] @ means.T).mean(0)
        best = int(scores[1:4].argmax()) + 1
        expected = sorted([*range(0, 8), *range(best * 8, best * 8 + 8), *range(32, 37)])
        assert keep[head].nonzero().flatten().tolist() == expected
    assert retrieval_keep(query, keys[:, :20], budget=24, chunk=8).all()  # it fits: all kept


@pytest.mark.parametrize("shape", [dict(num_kv_heads=2), dict(ffn="moe", num_kv_heads=2)], ids=["dense", "moe"])
@pytest.mark.parametrize("length", [120, 30])
def test_greedy_triforce_is_plain_greedy(shape, length):
    model = tiny_model(**shape, num_layers=3)
    draft = tiny_model(num_layers=1, num_kv_heads=2)
    batch = [prompt(length), prompt(length - 7, seed=1)]
    plain = [r.output for r in Engine(model, max_batch=2).generate(batch, GREEDY)]
    speculator = TriForce(draft, budget=32, chunk=8, num_speculations=4, draft_speculations=2, sinks=4, recent=12)
    engine = Engine(model, max_batch=2, speculator=speculator)
    done = engine.generate(batch, GREEDY)
    assert [r.output for r in done] == plain
    assert all(r.drafted > 0 for r in done)


def test_the_retrieval_cache_holds_the_budget_then_the_generated_tokens():
    model = tiny_model(num_kv_heads=2)
    speculator = TriForce(tiny_model(num_layers=1), budget=32, chunk=8, num_speculations=3, sinks=4, recent=12)
    engine = Engine(model, speculator=speculator)
    request = engine.add(prompt(100), SamplingParams(max_new_tokens=40, ignore_eos=True))
    engine.step()  # the prefill
    # 4 chunks of the budget: chunk 0, the last (partial: 96..99) and the 2 best others: 28 entries
    assert (speculator.retrieval.lengths[:, 0] == 28).all()
    positions = speculator.retrieval.positions[0][0, 0]
    assert positions[:8].tolist() == list(range(8)) and positions[24:28].tolist() == list(range(96, 100))
    assert (speculator.draft_cache.lengths[:, 0] <= 16).all()  # the draft's streaming cache
    engine.step()
    engine.step()
    grown = speculator.retrieval.positions[0][0, 0]
    new = grown[(grown >= 100) & (grown != EMPTY)]
    assert new.tolist() == list(range(100, 100 + len(request.output) - 1))  # every accepted token, in order


def test_triforce_settings():
    model = tiny_model()
    with pytest.raises(UserError, match="full KV policy"):
        Engine(model, kv_policy=SnapKV(capacity=64, window=8), speculator=TriForce(tiny_model(num_layers=1)))
    with pytest.raises(UserError, match="two chunks"):
        TriForce(tiny_model(num_layers=1), budget=8)
    with pytest.raises(UserError, match="tokenizer"):
        Engine(model, speculator=TriForce(tiny_model(vocab_size=500)))
