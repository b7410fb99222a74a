"""The decode layout: transposed Linear storage computes the same function and keeps the state
dict's names and shapes, so checkpoints and weight copies do not see it."""

import copy

import torch
from infer_models import VOCAB, tiny_model

from ctlab.infer.layout import TransposedLinear, decode_layout


def test_same_function_same_state_dict():
    model = tiny_model(num_kv_heads=2, qkv_bias=True)
    laid = decode_layout(copy.deepcopy(model))
    assert isinstance(laid.layers[0].attention.qkv_proj, TransposedLinear)
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(laid(x).logits, model(x).logits, atol=1e-5, rtol=0)
    ours, theirs = laid.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = tiny_model(num_kv_heads=2, qkv_bias=True)
    decode_layout(other).load_state_dict(theirs)
    with torch.no_grad():
        torch.testing.assert_close(other(x).logits, model(x).logits, atol=1e-5, rtol=0)


def test_a_tied_head_stays_tied():
    model = decode_layout(tiny_model(tie_embeddings=True))
    assert model.lm_head.weight is model.embed_tokens.weight
