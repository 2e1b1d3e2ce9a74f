"""GPU shares of `rayrejuv rl` (rollout, reference, learner): validation and what the run reserves.
CPU only: nothing starts."""

import pytest

from rayrejuv.commands.rl.config import RLConfig

BASE = {"model": "m", "train_data": "t.jsonl", "out": "o"}


def cfg(**kw) -> RLConfig:
    return RLConfig.model_validate({**BASE, **kw})


def test_one_gpu_shared_by_rollout_reference_and_learner():
    c = cfg(rollout={"device": "cuda", "gpus_per_worker": 0.25, "reference_gpus": 0.25},
            learner={"use_gpu": True, "gpus_per_worker": 0.5, "engine": "ddp"})
    assert c.reference_gpus() == 0.25
    assert c.gpu_demand() == pytest.approx(1.0)


def test_reference_defaults_to_a_rollout_share_on_cuda_and_none_without_kl():
    c = cfg(rollout={"device": "cuda", "gpus_per_worker": 0.3})
    assert c.reference_gpus() == 0.3 and c.gpu_demand() == pytest.approx(0.6)
    assert cfg(rollout={"device": "cuda", "gpus_per_worker": 0.3}, grpo={"beta": 0.0}).gpu_demand() == 0.3
    assert cfg().reference_gpus() == 0.0 and cfg().gpu_demand() == 0.0


def test_defaults_keep_one_gpu_per_learner_worker():
    c = cfg(learner={"use_gpu": True, "workers": 4, "engine": "ddp"})
    assert c.learner.gpus_per_worker == 1.0 and c.gpu_demand() == 4.0


@pytest.mark.parametrize("values, message", [
    ({"rollout": {"device": "cuda"}}, "rollout.gpus_per_worker > 0"),
    ({"rollout": {"device": "cuda", "gpus_per_worker": 1.5}}, "whole number"),
    ({"learner": {"use_gpu": True, "gpus_per_worker": 2.5, "engine": "ddp"}}, "whole number"),
    ({"learner": {"gpus_per_worker": 0.5}}, "only with learner.use_gpu"),
    ({"learner": {"use_gpu": True, "workers": 2, "gpus_per_worker": 0.5, "engine": "ddp"}}, "NCCL cannot run two"),
    ({"rollout": {"device": "cuda", "gpus_per_worker": 0.5, "reference_gpus": 0}}, "rollout.reference_gpus > 0"),
    ({"learner": {"use_gpu": True, "gpus_per_worker": 0}}, "greater than 0"),
])
def test_bad_gpu_shares_are_refused_with_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        cfg(**values)


def test_colocated_sets_the_shares_that_separate_needs_set():
    """hf rollouts on CUDA with no share given: separate refuses it (Ray would hide the GPU), colocated
    reserves one GPU and splits it (learner 0.4 + rollout 0.4 + reference 0.2)."""
    values = {"rollout": {"device": "cuda"}, "learner": {"use_gpu": True, "engine": "ddp"}}
    with pytest.raises(ValueError, match="rollout.gpus_per_worker > 0"):
        cfg(**values)
    c = cfg(placement="colocated", **values)
    assert c.gpu_demand() == 1.0
    assert c.learner_resources()["GPU"] + c.reference_gpus() == pytest.approx(0.6)
