"""The inference interface of the decoder: the preallocated per-row, per-head KV cache with
positions, eviction, crop, row views, a forward over a range of layers, logits only where
asked, and the observation hook. Each cached path is checked against a forward without a
cache (or, for evictions, against attention written out with the same per-head masks)."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import KINDS, VOCAB, ids, model_of

from ctlab.model.cache import EMPTY, CacheFull, KVCache
from ctlab.model.decoder import Decoder
from ctlab.model.layers import apply_rotary, rotary_tables

ATOL = 1e-5


def masked_reference(model: Decoder, input_ids: torch.Tensor, allowed: list[torch.Tensor]) -> torch.Tensor:
    """Logits (B, T, V) of a forward without a cache in which query t of KV head h at layer l
    attends to key s where ``allowed[l][b, h, t, s]``: attention written out term by term."""
    config = model.config
    batch, length = input_ids.shape
    positions = torch.arange(length).expand(batch, length)
    cos, sin = rotary_tables(positions, config.head_dim, config.rope_theta, torch.float32)
    x = model.embed_tokens(input_ids)
    group = config.num_heads // config.num_kv_heads
    split = (
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
    )
    for layer, block in enumerate(model.layers):
        attention = block.attention
        q, k, v = attention.qkv_proj(block.input_norm(x)).split(split, dim=-1)
        q = apply_rotary(q.view(batch, length, config.num_heads, -1).transpose(1, 2), cos, sin)
        k = apply_rotary(k.view(batch, length, config.num_kv_heads, -1).transpose(1, 2), cos, sin)
        v = v.view(batch, length, config.num_kv_heads, -1).transpose(1, 2)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(config.head_dim)
        scores = scores.masked_fill(~allowed[layer].repeat_interleave(group, 1), float("-inf"))
        out = F.softmax(scores, dim=-1) @ v
        x = x + attention.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
        ffn = block.ffn(block.ffn_norm(x))
        x = x + (ffn[0] if isinstance(ffn, tuple) else ffn)
    return model.exit_logits(x)


# ---------------------------------------------------------------- appending in chunks


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("chunk", [1, 3])
def test_cache_matches_full_forward(kind, chunk):
    model = model_of(kind)
    x = ids(2, 14)
    prompt = 5
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache.for_model(model, 2, 16)
        out = model(x[:, :prompt], cache=cache).logits
        torch.testing.assert_close(out, full[:, :prompt], atol=ATOL, rtol=0)
        for start in range(prompt, x.shape[1], chunk):
            end = min(start + chunk, x.shape[1])
            out = model(x[:, start:end], cache=cache).logits
            assert (cache.lengths == end).all() and (cache.end == end).all()
            torch.testing.assert_close(out, full[:, start:end], atol=ATOL, rtol=0)


def test_crop_and_refeed():
    model = model_of()
    x, other = ids(2, 12), ids(2, 4)
    with torch.no_grad():
        full = model(x).logits
        branch = model(torch.cat([x[:, :8], other], dim=1)).logits
        cache = KVCache.for_model(model, 2, 12)
        model(x, cache=cache)
        cache.crop(8)
        assert (cache.lengths == 8).all() and (cache.end == 8).all()
        assert all((p[:, :, 8:] == EMPTY).all() for p in cache.positions)
        torch.testing.assert_close(model(x[:, 8:], cache=cache).logits, full[:, 8:], atol=ATOL, rtol=0)
        cache.crop(8)
        for i in range(4):  # another continuation: that of a full forward on it, token by token
            out = model(other[:, i : i + 1], cache=cache).logits
            torch.testing.assert_close(out[:, -1], branch[:, 8 + i], atol=ATOL, rtol=0)


def test_crop_per_row():
    model = model_of()
    x = ids(2, 10)
    with torch.no_grad():
        cache = KVCache.for_model(model, 2, 12)
        model(x, cache=cache)
        cache.crop(torch.tensor([6, 9]))
    assert cache.lengths[:, 0].tolist() == [[6, 6]] * 2 and cache.lengths[:, 1].tolist() == [[9, 9]] * 2
    assert cache.end.tolist() == [[6, 9], [6, 9]]


# ---------------------------------------------------------------- eviction keeps true positions


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_evicted_entries_keep_their_positions(kind):
    """Evict half of a prefix's entries, different ones per layer and KV head, decode one token:
    the logits equal a full forward whose last query is masked to the same kept positions."""
    model = model_of(kind)
    prefix, batch = 12, 2
    x = ids(batch, prefix + 1)
    cache = KVCache.for_model(model, batch, 16)
    allowed = []
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model(x[:, :prefix], cache=cache)
        for layer in range(model.config.num_layers):
            scores = torch.rand(batch, model.config.num_kv_heads, prefix, generator=generator)
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(prefix // 2).indices, True)
            cache.select(layer, keep)
            mask = torch.ones(prefix + 1, prefix + 1, dtype=torch.bool).tril().repeat(batch, 2, 1, 1)
            mask[:, :, -1, :prefix] = keep
            allowed.append(mask)
        assert (cache.lengths == prefix // 2).all()
        kept_positions = cache.positions[0][:, :, : prefix // 2]
        assert (kept_positions.diff(dim=-1) > 0).all()  # compacted in order of position
        out = model(x[:, prefix:], cache=cache).logits[:, -1]
        expected = masked_reference(model, x, allowed)[:, -1]
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # positions follow the row, not the number of entries left
    assert cache.end[0].tolist() == [prefix + 1] * batch
    assert (cache.positions[0][:, :, prefix // 2] == prefix).all()


def test_uneven_head_lengths_append_per_head():
    model = model_of()
    x = ids(1, 9)
    with torch.no_grad():
        cache = KVCache.for_model(model, 1, 12)
        model(x[:, :8], cache=cache)
        keep = torch.ones(1, 2, 8, dtype=torch.bool)
        keep[0, 0, :5] = False  # head 0 keeps 3 entries, head 1 all 8
        for layer in range(2):
            cache.select(layer, keep)
        model(x[:, 8:], cache=cache)
        allowed = torch.ones(9, 9, dtype=torch.bool).tril().repeat(1, 2, 1, 1)
        allowed[0, 0, 8, :5] = False
        expected = masked_reference(model, x, [allowed, allowed])[:, -1]
        cache.crop(9)  # nothing above 9: unchanged
        assert cache.lengths[0].tolist() == [[4, 9]]
        assert cache.positions[0][0, 0, :4].tolist() == [5, 6, 7, 8]
        assert cache.nbytes() == 2 * (4 + 9) * 2 * model.config.head_dim * 4
        cache.crop(8)
        out = model(x[:, 8:], cache=cache).logits[:, -1]
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_select_shape_checked_and_capacity_enforced():
    model = model_of()
    cache = KVCache.for_model(model, 1, 6)
    with torch.no_grad():
        model(ids(1, 4), cache=cache)
        with pytest.raises(ValueError, match="keep must be"):
            cache.select(0, torch.ones(1, 2, 5, dtype=torch.bool))
        with pytest.raises(CacheFull, match="capacity of 6"):
            model(ids(1, 3), cache=cache)


# ---------------------------------------------------------------- rows of different lengths


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_rows_of_different_lengths_decode_together(kind):
    """Each prompt prefilled into its own row, then all rows decoded in one batch: each row's
    logits equal those of its own sequence without a cache."""
    model = model_of(kind)
    lengths = [3, 7, 5]
    sequences = [ids(1, n + 4) for n in lengths]
    cache = KVCache.for_model(model, 3, 12)
    with torch.no_grad():
        for row, (n, seq) in enumerate(zip(lengths, sequences, strict=True)):
            model(seq[:, :n], cache=cache.rows(row, row + 1))
        assert cache.end[0].tolist() == lengths
        for step in range(4):
            tokens = torch.cat([seq[:, n + step : n + step + 1] for n, seq in zip(lengths, sequences, strict=True)])
            out = model(tokens, cache=cache).logits[:, -1]
            for row, (n, seq) in enumerate(zip(lengths, sequences, strict=True)):
                expected = model(seq[:, : n + step + 1]).logits[0, -1]
                torch.testing.assert_close(out[row], expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- layer ranges and logits


@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_ranges_continue_on_one_cache(kind):
    """Layers [0, E) for several tokens (a draft), then layers [E, L) for all of them at once
    (the verification): the logits of a full forward, with the lower layers' entries reused."""
    model = model_of(kind, num_layers=4)
    x = ids(2, 10)
    exit_layer = 2
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache.for_model(model, 2, 12)
        model(x[:, :6], cache=cache)
        exits = []
        for t in range(6, 10):
            run = model.run_layers(model.embed_tokens(x[:, t : t + 1]), cache=cache, stop=exit_layer)
            exits.append(run.hidden)
        assert cache.end[:, 0].tolist() == [10, 10, 6, 6]
        upper = model.run_layers(torch.cat(exits, dim=1), cache=cache, start=exit_layer)
        torch.testing.assert_close(model.exit_logits(upper.hidden), full[:, 6:], atol=ATOL, rtol=0)
        assert (cache.end == 10).all()


def test_logits_only_where_asked():
    model = model_of()
    x = ids(3, 8)
    index = torch.tensor([[7], [2], [4]])
    with torch.no_grad():
        full = model(x).logits
        some = model(x, logits_index=index).logits
    assert some.shape == (3, 1, VOCAB)
    torch.testing.assert_close(some[:, 0], full[torch.arange(3), index[:, 0]], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- observation hook


def test_observer_sees_each_layers_queries():
    model = model_of()
    seen = []
    cache = KVCache.for_model(model, 2, 10)
    cache.observer = lambda layer, queries, cache: seen.append((layer, tuple(queries.shape), cache.used(layer)))
    with torch.no_grad():
        model(ids(2, 5), cache=cache)
        model(ids(2, 1), cache=cache)
    assert seen == [(0, (2, 4, 5, 16), 5), (1, (2, 4, 5, 16), 5), (0, (2, 4, 1, 16), 6), (1, (2, 4, 1, 16), 6)]


def test_queries_through_the_observer_rebuild_attention():
    """The evidence is exact: softmax(q·Kᵀ/√d) from the observed queries and cached keys,
    weighted over the values, is what the layer's attention computed."""
    model = model_of()
    captured = {}

    def observe(layer, queries, cache):
        keys, values, _ = cache.entries(layer)
        captured[layer] = (queries.clone(), keys.clone(), values.clone())

    cache = KVCache.for_model(model, 1, 8)
    cache.observer = observe
    block = model.layers[0].attention
    outputs = []
    handle = block.o_proj.register_forward_hook(lambda module, args, out: outputs.append(args[0]))
    with torch.no_grad():
        model(ids(1, 6), cache=cache)
    handle.remove()
    queries, keys, values = captured[0]
    group = model.config.num_heads // model.config.num_kv_heads
    scores = queries @ keys.repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(model.config.head_dim)
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    rebuilt = F.softmax(scores, dim=-1) @ values.repeat_interleave(group, 1)
    torch.testing.assert_close(rebuilt.transpose(1, 2).reshape(1, 6, -1), outputs[0], atol=ATOL, rtol=0)


def test_per_layer_capacity_and_bytes():
    model = model_of()
    cache = KVCache.for_model(model, 2, [8, 4])
    assert [cache.capacity(i) for i in range(2)] == [8, 4]
    with torch.no_grad():
        model(ids(2, 4), cache=cache)
    head_dim = model.config.head_dim
    assert cache.nbytes() == 2 * 2 * 2 * 4 * 2 * head_dim * 4  # layers · rows · heads · entries · (k, v) · D · fp32
    with pytest.raises(CacheFull, match="layer 1"):
        with torch.no_grad():
            model(ids(2, 1), cache=cache)
