"""Chunked completion log-probs and entropies (issue 14 item 7): equal to the whole-logits values
and gradients within 1e-6 in float32, and at most one chunk's (chunk, V) logits alive at a time."""

import functools
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rayrejuv.method.entropy import token_entropy
from rayrejuv.method.logprobs import token_logprobs_and_entropy

M, H, V = 13, 16, 97


def _inputs(bias: bool):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(M, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_() if bias else None
    targets = torch.randint(0, V, (M,), generator=g)
    return hidden, weight, b, targets


def _whole(hidden, weight, bias, targets, temperature):
    """Today's path: the whole (M, V) logits, log_softmax + gather, token_entropy."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1), token_entropy(logits)


def _grads(fn, tensors, coef):
    """Values and the gradients of sum(a * logp + b * entropy) in every input."""
    logp, ent = fn()
    (coef[0] * logp + coef[1] * ent).sum().backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return logp.detach(), ent.detach(), grads


@pytest.mark.parametrize("chunk", [1, 4, M, M + 5])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_values_and_gradients_equal_the_whole_logits(chunk, bias):
    hidden, weight, b, targets = _inputs(bias)
    tensors = [t for t in (hidden, weight, b) if t is not None]
    coef = torch.randn(2, M, generator=torch.Generator().manual_seed(1))
    want = _grads(lambda: _whole(hidden, weight, b, targets, 0.7), tensors, coef)
    head = functools.partial(torch.nn.functional.linear, weight=weight, bias=b)
    got = _grads(lambda: token_logprobs_and_entropy(hidden, head, targets, chunk, 0.7), tensors, coef)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the no-grad path (scoring, the reference) gives the same values
        logp, ent = token_logprobs_and_entropy(hidden, head, targets, chunk, 0.7)
    torch.testing.assert_close(logp, want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent, want[1], rtol=1e-6, atol=1e-6)


class LiveLogits(TorchDispatchMode):
    """Tracks how many bytes of tensors with a vocabulary-sized last dimension are alive at once
    (every op's outputs, forward and backward), through weakref finalizers."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.live, self.peak, self.seen = vocab, 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[-1] == self.vocab:
                key = t.untyped_storage().data_ptr()
                if key not in self.seen and key not in inputs:  # new memory, not a view (weight.t())
                    self.seen.add(key)
                    size = t.untyped_storage().nbytes()
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t.untyped_storage(), self._free, key, size)
        return out

    def _free(self, key, size):
        self.seen.discard(key)
        self.live -= size


@pytest.mark.parametrize("chunk", [2, 5])
def test_at_most_one_chunk_of_logits_is_alive_in_forward_and_backward(chunk):
    hidden, weight, _, targets = _inputs(False)
    with LiveLogits(V) as whole:
        logp, ent = _whole(hidden, weight, None, targets, 1.0)
        (logp + ent).sum().backward()
    with LiveLogits(V) as chunked:
        head = functools.partial(torch.nn.functional.linear, weight=weight)
        logp, ent = token_logprobs_and_entropy(hidden, head, targets, chunk, 1.0)
        (logp + ent).sum().backward()
    one = chunk * V * 4  # float32 bytes of one chunk's logits
    assert whole.peak >= 3 * M * V * 4  # the check sees the whole path's logits (several (M, V) at once)
    assert chunked.peak <= 6 * one < whole.peak, (chunked.peak / one, whole.peak / one)


@pytest.mark.parametrize("family, tie", [("llama", False), ("qwen3", True)])
def test_completion_scorer_equals_the_lm_forward_logits(make_pair, family, tie):
    """The learner's and the reference's chunked path against the model's own (N, P+T, V) logits:
    values and every parameter's gradient within 1e-6 (float32)."""
    from transformers import AutoModelForCausalLM

    from rayrejuv.models.logprobs import CompletionScorer, completion_logits, score_completions, token_logprobs

    _, sft = make_pair(family, tie_sft=tie)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    batch = _rollout(len_prompt=5, len_completion=7, vocab=model.config.vocab_size, g=g)
    coef = torch.randn(2, *batch.completion_ids.shape, generator=g)

    def run(fn):
        logp, ent = fn()
        # a token mean, as the GRPO loss the learner backpropagates
        ((coef[0] * logp + coef[1] * ent) * batch.completion_mask).sum().div(batch.completion_mask.sum()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return logp.detach(), (ent * batch.completion_mask).detach(), grads

    def whole():
        logits = completion_logits(model, batch, 0.8)
        return token_logprobs(logits, batch), token_entropy(logits)

    want = run(whole)
    got = run(lambda: score_completions(CompletionScorer(model, chunk=3), batch, 0.8))
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k], rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def _rollout(len_prompt: int, len_completion: int, vocab: int, g: torch.Generator):
    from rayrejuv.models.rollout import Rollout

    n = 4
    prompt_mask = torch.ones(n, len_prompt, dtype=torch.long)
    prompt_mask[1, :2] = 0  # left padding
    completion_mask = torch.ones(n, len_completion, dtype=torch.long)
    completion_mask[2, 4:] = 0  # ended early
    return Rollout(
        prompt_ids=torch.randint(4, vocab, (n, len_prompt), generator=g) * prompt_mask,
        prompt_mask=prompt_mask,
        completion_ids=torch.randint(4, vocab, (n, len_completion), generator=g),
        completion_mask=completion_mask,
        logprobs=torch.zeros(n, len_completion),
    )
