"""KV-cache policies: what each keeps, that each at a budget covering the context changes
nothing, and SnapKV's kept positions per head equal kvpress's SnapKVPress on the same HF
checkpoint and prompt."""

import pytest
import torch
from infer_models import VOCAB, tiny_model
from transformers import AutoModelForCausalLM, DynamicCache

from ctlab.errors import UserError
from ctlab.infer.engine import Engine
from ctlab.infer.policies import CORM, SnapKV, StreamingCache
from ctlab.infer.sampling import SamplingParams
from ctlab.model.cache import EMPTY, KVCache
from ctlab.model.hf import load_model

GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)


def prompt(length, seed=0):
    return torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def kept_positions(cache: KVCache, layer: int, row: int = 0) -> list[list[int]]:
    """Each KV head's kept positions, sorted."""
    positions = cache.positions[layer][row]
    return [sorted(p[p != EMPTY].tolist()) for p in positions]


# ---------------------------------------------------------------- SnapKV against kvpress


def kvpress_kept(folder, ids: list[int], ratio: float, window: int, kernel: int) -> dict[int, list[list[int]]]:
    """The positions kvpress's SnapKVPress keeps per layer and KV head (recorded in compress)."""
    from kvpress import SnapKVPress

    kept = {}

    class Recording(SnapKVPress):
        def compress(self, module, hidden_states, keys, values, attentions, kwargs):
            scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
            n_kept = int(keys.shape[2] * (1 - self.compression_ratio))
            kept[module.layer_idx] = [sorted(h.tolist()) for h in scores.topk(n_kept, dim=-1).indices[0]]
            return super().compress(module, hidden_states, keys, values, attentions, kwargs)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    cache = DynamicCache()
    with torch.no_grad(), Recording(compression_ratio=ratio, window_size=window, kernel_size=kernel)(model):
        model(torch.tensor([ids]), past_key_values=cache)
    assert cache.get_seq_length() == int(len(ids) * (1 - ratio))
    return kept


@pytest.mark.parametrize("shape", ["llama-gqa", "qwen2-bias"])
def test_snapkv_keeps_the_positions_kvpress_keeps(shape, checkpoint):
    _, folder = checkpoint(shape)
    ids, ratio, window, kernel = prompt(96), 0.5, 8, 5
    capacity = int(len(ids) * (1 - ratio))
    engine = Engine(load_model(folder), kv_policy=SnapKV(capacity=capacity, window=window, kernel=kernel))
    request = engine.add(ids, SamplingParams(max_new_tokens=1))
    engine.step()  # the prefill; the single new token finishes the request, so look before it leaves
    theirs = kvpress_kept(folder, ids, ratio, window, kernel)
    assert request.kv_bytes == request.full_kv_bytes * capacity // len(ids)
    # the engine freed the row: compress a cache of its own with the same policy
    model = load_model(folder)
    cache = KVCache.for_model(model, 1, 128)
    policy = SnapKV(capacity=capacity, window=window, kernel=kernel)
    cache.observer = policy.prefill_observer(cache, len(ids))
    with torch.no_grad():
        model(torch.tensor([ids]), cache=cache)
    cache.observer = None
    policy.after_prefill(cache)
    for layer in range(model.config.num_layers):
        ours = kept_positions(cache, layer)
        assert ours == theirs[layer]
        assert all(list(range(96 - window, 96)) == heads[-window:] for heads in ours)
    assert len({tuple(h) for h in kept_positions(cache, 0)}) > 1  # heads keep different positions


def test_snapkv_leaves_short_prompts_alone():
    model = tiny_model()
    engine = Engine(model, kv_policy=SnapKV(capacity=64, window=8))
    request = engine.generate([prompt(40)], GREEDY)[0]
    assert request.kv_bytes == request.full_kv_bytes
    assert request.output == Engine(model).generate([prompt(40)], GREEDY)[0].output


def test_snapkv_max_pooling_keeps_the_capacity():
    model = tiny_model(num_kv_heads=2)
    engine = Engine(model, kv_policy=SnapKV(capacity=32, window=8, pooling="max"))
    request = engine.generate([prompt(100)], GREEDY)[0]
    # when it finished: the 32 entries of the prompt it kept and the 9 new ones it fed, of 109
    assert request.kv_bytes == request.full_kv_bytes * 41 // 109 and len(request.output) == 10


# ---------------------------------------------------------------- the others


def test_streaming_keeps_sinks_and_recent():
    model = tiny_model()
    cache = KVCache.for_model(model, 1, 64)
    policy = StreamingCache(sinks=4, recent=16)
    with torch.no_grad():
        model(torch.tensor([prompt(40)]), cache=cache)
        policy.after_prefill(cache)
        assert kept_positions(cache, 1) == [[0, 1, 2, 3, *range(24, 40)]] * 4
        model(torch.tensor([[5]]), cache=cache)
        policy.after_step(cache)
    assert kept_positions(cache, 0) == [[0, 1, 2, 3, *range(25, 41)]] * 4


def test_corm_keeps_exactly_the_keys_recent_queries_attended():
    """Every query's attention is recomputed by hand as it happens; after each step the cache
    holds exactly the entries that are among the ``recent`` newest or got ≥ 1/t (t: the entries
    that query saw) from one of the last ``window`` queries, in any head of their KV group."""
    model = tiny_model(num_kv_heads=2)
    window, recent, group = 4, 6, 2
    policy = CORM(window=window, recent=recent)
    cache = KVCache.for_model(model, 1, 128)
    policy.prepare(cache)
    history = {0: [], 1: []}  # layer → [(query position, per KV head the positions it found important)]

    def record(layer, queries, cache):
        keys, _, positions = cache.entries(layer)
        first = int(cache.end[layer, 0]) - queries.shape[2]
        for t in range(queries.shape[2]):
            query_position, important = first + t, []
            for kv_head in range(2):
                visible = [s for s in range(keys.shape[2]) if positions[0, kv_head, s] <= query_position]
                found = set()
                for head in range(kv_head * group, (kv_head + 1) * group):
                    scores = (
                        torch.stack([queries[0, head, t] @ keys[0, kv_head, s] for s in visible])
                        / model.config.head_dim**0.5
                    )
                    weights = torch.softmax(scores.float(), dim=0)
                    found |= {
                        int(positions[0, kv_head, s])
                        for s, w in zip(visible, weights, strict=True)
                        if w >= 1 / len(visible)
                    }
                important.append(found)
            history[layer].append((query_position, important))

    def chained(observer):
        return lambda layer, queries, cache: (record(layer, queries, cache), observer(layer, queries, cache))

    expected = {layer: [set(range(40)), set(range(40))] for layer in range(2)}

    def check(newest):
        for layer in range(2):
            for kv_head in range(2):
                recent_queries = [imp[kv_head] for q, imp in history[layer] if q > newest - window]
                expected[layer][kv_head] = {
                    p for p in expected[layer][kv_head] if p > newest - recent or any(p in s for s in recent_queries)
                }
                assert kept_positions(cache, layer)[kv_head] == sorted(expected[layer][kv_head])

    ids = prompt(40)
    with torch.no_grad():
        cache.observer = chained(policy.prefill_observer(cache, 40))
        logits = model(torch.tensor([ids]), cache=cache).logits[:, -1]
        policy.after_prefill(cache)
        check(39)
        for step in range(25):
            for layer in range(2):
                for kv_head in range(2):
                    expected[layer][kv_head].add(40 + step)
            cache.observer = chained(policy.decode_observer(cache))
            logits = model(logits.argmax(-1, keepdim=True), cache=cache).logits[:, -1]
            policy.after_step(cache)
            check(40 + step)
    sizes = [len(expected[layer][h]) for layer in range(2) for h in range(2)]
    assert max(sizes) < 65 and min(sizes) > recent  # evicted some, kept some beyond the recent ones


@pytest.mark.parametrize(
    "policy",
    [SnapKV(capacity=200, window=8), StreamingCache(sinks=4, recent=250), CORM(window=300, recent=300)],
    ids=["snapkv", "streaming", "corm"],
)
def test_a_budget_covering_the_context_changes_nothing(policy):
    model = tiny_model(num_kv_heads=2)
    batch = [prompt(90), prompt(50, seed=1)]
    full = [r.output for r in Engine(model, max_batch=2, context=256).generate(batch, GREEDY)]
    assert [r.output for r in Engine(model, max_batch=2, context=256, kv_policy=policy).generate(batch, GREEDY)] == full


def test_compressed_decoding_equals_attention_over_the_kept_entries():
    """After SnapKV compresses, the next token's logits equal those of a cache that holds only
    the kept entries (built by prefilling, then selecting exactly those positions)."""
    model = tiny_model(num_kv_heads=2)
    ids = prompt(80)
    policy = SnapKV(capacity=24, window=8)
    compressed = KVCache.for_model(model, 1, 100)
    compressed.observer = policy.prefill_observer(compressed, 80)
    with torch.no_grad():
        model(torch.tensor([ids]), cache=compressed)
        compressed.observer = None
        policy.after_prefill(compressed)
        manual = KVCache.for_model(model, 1, 100)
        model(torch.tensor([ids]), cache=manual)
        for layer in range(2):
            keep = torch.zeros(1, 2, 80, dtype=torch.bool)
            for head, kept in enumerate(kept_positions(compressed, layer)):
                keep[0, head, kept] = True
            manual.select(layer, keep)
        a = model(torch.tensor([[7]]), cache=compressed).logits
        b = model(torch.tensor([[7]]), cache=manual).logits
        full = model(torch.tensor([ids + [7]])).logits[:, -1:]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, full, atol=1e-4)  # compression did change the attention


@pytest.mark.parametrize(
    "policy, message",
    [
        (SnapKV(capacity=500), "larger than the context"),
        (SnapKV(capacity=64, window=64), "must be below its capacity"),
        (SnapKV(capacity=64, pooling="mean"), "unknown SnapKV pooling"),
        (CORM(window=8, recent=4), "recent ≥ window"),
    ],
)
def test_bad_budgets_are_one_line_errors(policy, message):
    with pytest.raises(UserError, match=message):
        Engine(tiny_model(), kv_policy=policy)
