"""The engine: greedy output equal to transformers' generate, chunked prefill, continuous
batching, stops and limits, streaming, cancellation, and the one-line errors."""

import pytest
import torch
from infer_models import VOCAB, tiny_model
from transformers import AutoModelForCausalLM

from ctlab.errors import UserError
from ctlab.infer.engine import Engine, QueueFull
from ctlab.infer.sampling import SamplingParams
from ctlab.model.hf import load_model

GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True)


def prompts(*lengths):
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def transformers_greedy(folder, batch: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' batched greedy generate (left padding) of each prompt's new tokens."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    width = max(map(len, batch))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[:, width:].tolist()


@pytest.mark.parametrize("shape", ["llama-gqa", "qwen2-bias", "moe"])
def test_greedy_equals_transformers_generate(shape, checkpoint):
    """A batch of prompts of different lengths, two rows at a time: every output equals
    transformers' greedy generate of the same HF checkpoint."""
    _, folder = checkpoint(shape)
    batch = prompts(5, 11, 8)
    engine = Engine(load_model(folder), max_batch=2)
    done = engine.generate(batch, GREEDY)
    assert [r.finish_reason for r in done] == ["length"] * 3
    assert [r.output for r in done] == transformers_greedy(folder, batch, 12)


def test_chunked_prefill_changes_nothing():
    model = tiny_model(num_kv_heads=2)
    batch = prompts(40, 17)
    whole = [r.output for r in Engine(model, max_batch=2).generate(batch, GREEDY)]
    chunked = Engine(model, max_batch=2, prefill_chunk=7)
    assert [r.output for r in chunked.generate(batch, GREEDY)] == whole
    assert chunked.stats.forwards > Engine(model).stats.forwards  # several forwards per prompt


def test_a_request_joining_mid_decode_gets_its_own_output():
    model = tiny_model()
    first, second = prompts(9, 6)
    alone = Engine(model).generate([second], GREEDY)[0].output
    engine = Engine(model, max_batch=4)
    running = engine.add(first, SamplingParams(max_new_tokens=20, ignore_eos=True))
    for _ in range(5):
        engine.step()
    joined = engine.add(second, GREEDY)
    engine.run()
    assert joined.output == alone and len(running.output) == 20
    assert engine.running == [] and (engine.cache.lengths == 0).all()  # every row freed


def test_rows_leaving_in_any_order_keep_the_others_right():
    model = tiny_model(num_kv_heads=2)
    batch = prompts(4, 9, 6, 12)
    budgets = [3, 10, 1, 6]
    expected = [
        Engine(model).generate([p], SamplingParams(max_new_tokens=n, ignore_eos=True))[0].output
        for p, n in zip(batch, budgets, strict=True)
    ]
    engine = Engine(model, max_batch=3)
    requests = [
        engine.add(p, SamplingParams(max_new_tokens=n, ignore_eos=True)) for p, n in zip(batch, budgets, strict=True)
    ]
    engine.run()
    assert [r.output for r in requests] == expected


def test_stop_tokens_end_a_request_and_are_not_kept():
    model = tiny_model()
    prompt = prompts(7)[0]
    free = Engine(model).generate([prompt], GREEDY)[0].output
    stop = free[4]
    cut = free.index(stop)
    out = Engine(model).generate([prompt], SamplingParams(max_new_tokens=12, stop_token_ids=[stop]))[0]
    assert out.output == free[:cut] and out.finish_reason == "stop"
    eos = Engine(model, eos_token_id=stop).generate([prompt], SamplingParams(max_new_tokens=12))[0]
    assert eos.output == free[:cut] and eos.finish_reason == "stop"


def test_the_context_ends_a_request():
    model = tiny_model()
    engine = Engine(model, context=20)
    out = engine.generate(prompts(15), SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert len(out.output) == 5 and out.finish_reason == "length"


def test_stream_yields_the_generated_tokens_as_made():
    model = tiny_model()
    prompt = prompts(6)[0]
    expected = Engine(model).generate([prompt], GREEDY)[0].output
    engine = Engine(model)
    seen = []
    for token in engine.stream(prompt, GREEDY):
        seen.append((token, engine.stats.forwards))
    assert [t for t, _ in seen] == expected
    assert [f for _, f in seen] == list(range(1, 13))  # one token per forward, yielded at once


def test_sampling_is_reproducible_with_a_seed():
    model = tiny_model()
    prompt = prompts(6)[0]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=7, ignore_eos=True)
    a, b = Engine(model).generate([prompt, prompt], params)
    c = Engine(model).generate([prompt], params.__class__(**{**params.__dict__, "seed": 8}))[0]
    assert a.output == b.output and a.output != c.output


def test_cancel_frees_the_row():
    model = tiny_model()
    engine = Engine(model, max_batch=1)
    long = engine.add(prompts(5)[0], SamplingParams(max_new_tokens=100, ignore_eos=True))
    waiting = engine.add(prompts(6)[0], GREEDY)
    engine.step()
    engine.step()
    engine.cancel(long)
    engine.run()
    assert long.finish_reason == "cancelled" and len(long.output) < 100
    assert waiting.finish_reason == "length" and len(waiting.output) == 12
    assert list(long.tokens()) == long.output  # its stream ended


def test_bad_requests_are_one_line_errors():
    model = tiny_model()
    engine = Engine(model, context=32, max_waiting=1)
    with pytest.raises(UserError, match="does not fit the context of 32"):
        engine.add(list(range(3, 35)))
    with pytest.raises(UserError, match="empty"):
        engine.add([])
    with pytest.raises(UserError, match=r"in \[0, 300\)"):
        engine.add([5, VOCAB])
    engine.add([5, 6])
    with pytest.raises(QueueFull):
        engine.add([5, 6])
    with pytest.raises(UserError, match="beyond the model's 256 positions"):
        Engine(model, context=1000)


def test_abort_frees_every_row_and_the_engine_starts_clean():
    model = tiny_model()
    engine = Engine(model, max_batch=2)
    running = [engine.add(p, SamplingParams(max_new_tokens=30, ignore_eos=True)) for p in prompts(5, 9, 7)]
    engine.step()
    engine.step()
    engine.abort("error")
    assert all(r.finish_reason == "error" for r in running) and not engine.busy
    assert (engine.cache.lengths == 0).all() and (engine.cache.end == 0).all()
    fresh = engine.generate([prompts(6)[0]], GREEDY)[0]
    assert fresh.output == Engine(model).generate([prompts(6)[0]], GREEDY)[0].output


def test_cancelled_waiting_requests_leave_the_queue_at_once():
    engine = Engine(tiny_model(), max_batch=1, max_waiting=2)
    engine.add(prompts(5)[0], SamplingParams(max_new_tokens=50, ignore_eos=True))
    engine.step()  # the first runs
    waiting = [engine.add(prompts(6)[0], GREEDY), engine.add(prompts(7)[0], GREEDY)]
    with pytest.raises(QueueFull):
        engine.add([5, 6])
    for request in waiting:
        engine.cancel(request)
    engine.step()
    assert len(engine.waiting) == 0 and all(r.finish_reason == "cancelled" for r in waiting)
    engine.add([5, 6])  # room again, while the first still runs
    assert len(engine.running) == 1


def test_seeds_beyond_64_bits_are_refused():
    from ctlab.config import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        SamplingParams.of(seed=2**64)
