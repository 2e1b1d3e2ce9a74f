"""RL memory that scales with the model (issue 14 item 7): sampling log-probs recorded step by step,
checkpoints in the start's dtype, rollout and reference actors in the checkpoint's dtype."""

import pytest
import torch


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_recorded_per_step_equal_generates_stacked_scores(make_pair, temperature):
    """sample() no longer keeps generate's T x (N, V) scores: the same tokens (same seed) and the
    same log-probs as log_softmax over the stacked scores, the pre-issue-14 computation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrejuv.data.chat import encode_prompts
    from rayrejuv.models.logprobs import sample
    from rayrejuv.models.rollout import left_pad

    _, sft = make_pair("qwen3")
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(sft)
    ids = encode_prompts(tok, ["Q: 3+4? A:", "Q: a box holds 12 eggs. how many? A:"], "auto")
    r = sample(model, tok, ids, n=3, temperature=temperature, max_new_tokens=12, seed=0)

    prompt, attn = left_pad(ids, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=attn, do_sample=True, temperature=temperature,
                             top_p=1.0, top_k=0, num_return_sequences=3, max_new_tokens=12,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, output_scores=True,
                             return_dict_in_generate=True)
    completion = out.sequences[:, prompt.shape[1]:]
    logits = torch.stack(out.scores, dim=1).float()  # (N, T, V)
    want = torch.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1) * r.completion_mask
    assert torch.equal(r.completion_ids, completion)
    torch.testing.assert_close(r.logprobs, want, rtol=0, atol=1e-7)
