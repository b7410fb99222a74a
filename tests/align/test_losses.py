"""The preference losses: DPO and IPO against trl's DPOTrainer (loss and gradients), TDPO1/2,
SimPO and conservative DPO against their formulas written out here, and TDPO2's stop-gradient."""

import math

import pytest
import torch
import torch.nn.functional as F
from align_files import write_jsonl

from ctlab.align.losses import LOSSES, LossSettings, PairScores
from ctlab.align.preference import PairSet, sequence_scores
from ctlab.align.start import StartingPoint
from ctlab.model.hf import load_model, to_hf_state


def trl_loss_and_grads(policy_dir, reference_dir, records, loss_type: str, beta: float):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    reference = AutoModelForCausalLM.from_pretrained(str(reference_dir))
    args = DPOConfig(
        output_dir=str(policy_dir / "trl"),
        beta=beta,
        loss_type=[loss_type],
        report_to=[],
        per_device_train_batch_size=len(records),
        max_length=None,
        bf16=False,
        use_cpu=True,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    examples = [trainer.train_dataset[i] for i in range(len(records))]
    loss = trainer.compute_loss(policy, trainer.data_collator(examples))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    ids = [(e["prompt_ids"] + e["chosen_ids"], e["prompt_ids"] + e["rejected_ids"]) for e in examples]
    return loss.item(), grads, ids


def ctlab_loss_and_grads(policy_dir, reference_dir, path, name: str, beta: float):
    start = StartingPoint(str(policy_dir))
    pairs = PairSet(path, start, 256, announce=False)
    batch = pairs.batch(list(range(len(pairs))))
    policy, reference = load_model(policy_dir), load_model(reference_dir)
    logps, tokens, _ = sequence_scores(policy(batch["input_ids"], batch["position_ids"]).logits, batch)
    with torch.no_grad():
        ref = sequence_scores(reference(batch["input_ids"], batch["position_ids"]).logits, batch)[0]
    scores = PairScores(logps[0::2], logps[1::2], ref[0::2], ref[1::2], tokens[0::2], tokens[1::2])
    loss = LOSSES[name].function(scores, LossSettings(beta=beta)).mean()
    loss.backward()
    grads = to_hf_state(policy.config, {n: p.grad for n, p in policy.named_parameters()})
    ids = [(c.ids.tolist(), r.ids.tolist()) for c, r in pairs.pairs]
    return loss.item(), grads, ids


@pytest.mark.parametrize(("name", "trl_name"), [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trl(tmp_path, text_model, perturbed, pair_records, name, trl_name):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_records)
    theirs, their_grads, their_ids = trl_loss_and_grads(perturbed, text_model, pair_records, trl_name, beta=0.3)
    ours, our_grads, our_ids = ctlab_loss_and_grads(perturbed, text_model, path, name, beta=0.3)
    assert our_ids == their_ids  # the same tokens: prompt through the template, then the answer
    assert ours == pytest.approx(theirs, rel=1e-5)
    at_zero_margin = {"dpo": math.log(2), "ipo": (1 / (2 * 0.3)) ** 2}[name]
    assert abs(theirs - at_zero_margin) > 1e-3  # the policy differs from its reference: a loss that could be wrong
    assert set(our_grads) == set(their_grads)
    for key, grad in their_grads.items():
        torch.testing.assert_close(our_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def random_scores(pairs: int = 5, kl: bool = True, seed: int = 0) -> PairScores:
    g = torch.Generator().manual_seed(seed)

    def draw(scale=5.0):
        return (-scale * torch.rand(pairs, generator=g, dtype=torch.float64)).requires_grad_()

    return PairScores(
        draw(),
        draw(),
        draw(),
        draw(),
        torch.randint(1, 9, (pairs,), generator=g).double(),
        torch.randint(1, 9, (pairs,), generator=g).double(),
        torch.rand(pairs, generator=g, dtype=torch.float64).requires_grad_() if kl else None,
        torch.rand(pairs, generator=g, dtype=torch.float64).requires_grad_() if kl else None,
    )


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_tdpo_simpo_and_smoothing_equal_their_formulas():
    s = random_scores()
    settings = LossSettings(beta=0.2, alpha=0.7, label_smoothing=0.1, gamma=0.4)
    b, a, eps, gamma = settings.beta, settings.alpha, settings.label_smoothing, settings.gamma
    for i in range(5):
        w = s.chosen[i].item() - s.ref_chosen[i].item()
        lo = s.rejected[i].item() - s.ref_rejected[i].item()
        u = b * (w - lo)
        kl_w, kl_l = s.chosen_kl[i].item(), s.rejected_kl[i].item()
        expected = {
            "tdpo1": -logsigmoid(u - b * (kl_l - kl_w)),
            "tdpo2": -logsigmoid(u - a * b * (kl_l - kl_w)),
            "dpo": -(1 - eps) * logsigmoid(u) - eps * logsigmoid(-u),
            "simpo": -logsigmoid(
                b
                * (s.chosen[i].item() / s.chosen_tokens[i].item() - s.rejected[i].item() / s.rejected_tokens[i].item())
                - gamma
            ),
            "sft": -s.chosen[i].item() / s.chosen_tokens[i].item(),
        }
        for name, value in expected.items():
            assert LOSSES[name].function(s, settings)[i].item() == pytest.approx(value, rel=1e-12), name


def test_tdpo2_stops_the_gradient_through_the_chosen_kl():
    for name, flows in (("tdpo1", True), ("tdpo2", False)):
        s = random_scores(seed=3)
        LOSSES[name].function(s, LossSettings()).sum().backward()
        assert s.rejected_kl.grad.abs().min() > 0
        chosen_grad = s.chosen_kl.grad
        assert (chosen_grad is not None and chosen_grad.abs().min() > 0) == flows, name


def test_sequential_kl_is_the_sum_of_per_token_kls(tmp_path, text_model, perturbed, pair_records):
    """The KL of a response, packed with others, equals KL(ref ‖ policy) summed over its tokens
    computed on that response alone."""
    start = StartingPoint(str(perturbed))
    pairs = PairSet(write_jsonl(tmp_path / "p.jsonl", pair_records[:4]), start, 256, announce=False)
    policy, reference = load_model(perturbed), load_model(text_model)
    batch = pairs.batch([0, 1, 2, 3])
    with torch.no_grad():
        logits = policy(batch["input_ids"], batch["position_ids"]).logits
        ref_logits = reference(batch["input_ids"], batch["position_ids"]).logits
        logps, tokens, kl = sequence_scores(logits, batch, ref_logits)
        for j, (chosen, rejected) in enumerate(pairs.pairs):
            for k, sequence in enumerate((chosen, rejected)):
                ids = torch.tensor(sequence.ids)[None]
                p = F.log_softmax(policy(ids).logits[0], -1)
                q = F.log_softmax(reference(ids).logits[0], -1)
                positions = [t for t in range(len(sequence.ids) - 1) if sequence.targets[t + 1]]
                expected_kl = sum((q[t].exp() * (q[t] - p[t])).sum() for t in positions)
                expected_logp = sum(p[t, sequence.ids[t + 1]] for t in positions)
                assert kl[2 * j + k].item() == pytest.approx(expected_kl.item(), rel=1e-4, abs=1e-6)
                assert logps[2 * j + k].item() == pytest.approx(expected_logp.item(), rel=1e-5)
                assert tokens[2 * j + k].item() == len(positions)
