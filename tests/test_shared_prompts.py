"""grpo.share_prompts: each group's prompt computed once. The learner's scorer gives the values and
gradients of the whole-sequence forward (float32 tolerance); the hf rollouts' shared prefill samples
the same tokens with the same log-probs; a batch whose group rows hold different prompts is refused."""

import pytest
import torch

from rayrejuv.errors import RejuvError


def _grouped_rollout(vocab: int, g: torch.Generator, groups: int = 3, size: int = 3, prompt: int = 6, T: int = 7):
    """`groups` prompts of different lengths (left-padded), `size` completions each, some ended early."""
    from rayrejuv.models.rollout import Rollout

    prompt_mask = torch.ones(groups, prompt, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompt_mask[2, :4] = 0
    prompt_ids = torch.randint(4, vocab, (groups, prompt), generator=g) * prompt_mask
    N = groups * size
    completion_mask = torch.ones(N, T, dtype=torch.long)
    completion_mask[1, 3:] = 0
    completion_mask[5, 5:] = 0
    completion_mask[7, 1:] = 0
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(size, 0),
        prompt_mask=prompt_mask.repeat_interleave(size, 0),
        completion_ids=torch.randint(4, vocab, (N, T), generator=g),
        completion_mask=completion_mask,
        logprobs=torch.zeros(N, T),
        group=torch.arange(groups).repeat_interleave(size),
    )


@pytest.mark.parametrize("family, tie", [("llama", False), ("qwen3", True), ("qwen2", False)])
def test_shared_prompt_scorer_equals_the_whole_sequence_forward(make_pair, family, tie):
    from transformers import AutoModelForCausalLM

    from rayrejuv.models.logprobs import CompletionScorer, score_completions

    _, sft = make_pair(family, tie_sft=tie)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    batch = _grouped_rollout(model.config.vocab_size, g)
    coef = torch.randn(2, *batch.completion_ids.shape, generator=g)
    scorer = CompletionScorer(model, chunk=5)

    def run(share: bool):
        logp, ent = score_completions(scorer, batch, 0.8, share)
        ((coef[0] * logp + coef[1] * ent) * batch.completion_mask).sum().div(batch.completion_mask.sum()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return logp.detach(), (ent * batch.completion_mask).detach(), grads

    want, got = run(False), run(True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert any(float(v.abs().max()) > 1e-4 for v in want[2].values())  # the gradients are not all ~0


def test_prompt_runs_are_the_groups_and_a_mixed_group_is_refused():
    from rayrejuv.models.logprobs import prompt_runs

    g = torch.Generator().manual_seed(1)
    batch = _grouped_rollout(50, g)
    first, run = prompt_runs(batch)
    assert first.tolist() == [0, 3, 6]
    assert run.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # a micro-batch that starts inside a group: its runs are what it holds
    first, run = prompt_runs(batch.select(slice(2, 8)))
    assert first.tolist() == [0, 1, 4] and run.tolist() == [0, 1, 1, 1, 2, 2]
    batch.prompt_ids[4, -1] += 1  # row 4 of group 1 holds another prompt
    with pytest.raises(RejuvError, match="different prompt_ids"):
        prompt_runs(batch)


def test_shared_prefill_samples_the_same_tokens(make_pair, tokenizer):
    from transformers import AutoModelForCausalLM

    from rayrejuv.models.logprobs import sample

    _, sft = make_pair("qwen3", tie_sft=True)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    prompts = [[5, 9, 7, 11, 6], [8, 12], [7, 7, 9]]  # left-padded to 5 in one batch
    kw = {"n": 4, "temperature": 0.9, "max_new_tokens": 9, "seed": 3}
    plain = sample(model, tokenizer, prompts, **kw)
    shared = sample(model, tokenizer, prompts, **kw, share_prompts=True)
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_mask, plain.completion_mask)
    assert torch.equal(shared.prompt_ids, plain.prompt_ids) and torch.equal(shared.group, plain.group)
    torch.testing.assert_close(shared.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
    assert shared.texts == plain.texts
    assert len(set(plain.texts)) > 3  # sampled, not one text repeated


def test_share_prompts_needs_gradient_checkpointing_off(tmp_path):
    from pydantic import ValidationError

    from rayrejuv.commands.rl.config import RLConfig

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    base = {"model": str(tmp_path), "train_data": str(data), "out": str(tmp_path / "out"),
            "grpo": {"share_prompts": True}}
    with pytest.raises(ValidationError, match="grpo.share_prompts needs learner.gradient_checkpointing: false"):
        RLConfig.model_validate(base)
    assert RLConfig.model_validate(base | {"learner": {"gradient_checkpointing": False}}).grpo.share_prompts


def test_learner_step_with_shared_prompts_is_the_step_without(make_pair):
    """One GRPO update with share_prompts, the batch in one micro-batch, in micro-batches of one group
    and in micro-batches that cut groups (2 rows), against the update without sharing: the same
    weights (1e-6) and metrics."""
    from transformers import AutoModelForCausalLM

    from rayrejuv.config.rl import GRPOConfig, LearnerConfig
    from rayrejuv.distributed.learner import Learner

    _, sft = make_pair("qwen3", tie_sft=True)
    vocab = AutoModelForCausalLM.from_pretrained(sft).config.vocab_size
    batch = _grouped_rollout(vocab, torch.Generator().manual_seed(2))
    batch.advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(3))
    runs = {}
    for share, micro in ((False, 9), (True, 9), (True, 3), (True, 2)):
        model = AutoModelForCausalLM.from_pretrained(sft)
        grpo = GRPOConfig(micro_batch_size=micro, beta=0.0, prompts_per_step=3, group_size=3, share_prompts=share)
        learner = Learner(model, grpo, LearnerConfig(gradient_checkpointing=False), torch.device("cpu"))
        learner.engine.opt = torch.optim.SGD(model.parameters(), lr=1.0)
        runs[share, micro] = learner.update(batch), learner.weights()
    want, w_want = runs[False, 9]
    assert want["policy/grad_norm"] > 1e-3
    for key in [(True, 9), (True, 3), (True, 2)]:
        got, w_got = runs[key]
        for k in ("policy/entropy", "policy/grad_norm", "policy/pg_loss", "policy/update_norm"):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), (key, k)
        for k in w_want:
            torch.testing.assert_close(w_got[k], w_want[k], rtol=0, atol=1e-6,
                                       msg=lambda m, k=k, key=key: f"{key} {k}: {m}")


def test_generate_shares_each_prompts_prefill_among_its_samples(make_pair, tokenizer):
    """evaluate.generate (pass@k samples, the hf backend's `complete`): the same texts with the
    shared prefill as with generate's own expansion, in the prompts' order whatever their lengths."""
    from transformers import AutoModelForCausalLM

    from rayrejuv.models.evaluate import generate

    _, sft = make_pair("llama")
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    prompts = [[5, 9, 7, 11, 6], [8, 12], [7, 7, 9], [10, 4, 6, 9]]
    kw = {"num_samples": 3, "do_sample": True, "temperature": 1.0, "max_new_tokens": 7, "batch_size": 2, "seed": 4}
    shared = generate(model, tokenizer, prompts, **kw)
    assert shared == generate(model, tokenizer, prompts, **kw, share_prompts=False)
    assert [len(t) for t in shared] == [3, 3, 3, 3] and len({t for ts in shared for t in ts}) > 4
    # greedy, one at a time and in one batch: each prompt's completion, in order
    greedy = generate(model, tokenizer, prompts, num_samples=1, do_sample=False, max_new_tokens=7, batch_size=4)
    one_by_one = [generate(model, tokenizer, [p], num_samples=1, do_sample=False, max_new_tokens=7)[0] for p in prompts]
    assert greedy == one_by_one
