"""Sampling log-probs from generate agree with the learner's teacher-forced log-probs."""

import pytest
import torch

from rayrejuv.data.chat import encode_prompts
from rayrejuv.models.logprobs import completion_logprobs, completion_mask, sample


def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]])
    assert completion_mask(ids, eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_teacher_forced(make_pair, temperature):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, sft = make_pair("qwen3")
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(sft)
    prompts = ["Q: 3+4? A:", "Q: a box holds 12 eggs. 5 are taken out. how many? A:"]  # different lengths
    ids = encode_prompts(tok, prompts, "auto")
    r = sample(model, tok, ids, n=3, temperature=temperature, max_new_tokens=12, seed=0)
    assert r.completion_ids.shape[0] == 6 and r.completion_mask.sum() > 0
    with torch.no_grad():
        learner = completion_logprobs(model, r, temperature=temperature)
    torch.testing.assert_close(learner, r.logprobs, rtol=1e-4, atol=1e-4)
    assert float(r.logprobs[r.completion_mask.bool()].max()) <= 0.0
