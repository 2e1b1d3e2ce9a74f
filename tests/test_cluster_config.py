"""cluster.yaml passes Ray's own cluster-launcher validation, and every job config under jobs/
parses into the typed config of its command, as it is (no placeholders merged in)."""

import copy
from pathlib import Path

import pytest
import yaml

from rayrejuv.commands.demo.config import DemoConfig
from rayrejuv.commands.rejuvenate.config import RejuvenateConfig
from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.tune.config import TuneConfig
from rayrejuv.config.base import load_yaml, validate_config

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").rglob("*.yaml"))
MODELS = {"rejuvenate": RejuvenateConfig, "rl": RLConfig, "tune": TuneConfig, "demo": DemoConfig}


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    gpu_types = [t for t, v in types.items() if v["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker node type"
    for t in gpu_types:
        assert 0 <= types[t]["min_workers"] <= types[t]["max_workers"]
    # our sections survive the merge with Ray's AWS defaults
    assert prepared["file_mounts"]["~/rayrejuv"] == "."
    assert any("pip install" in c and ".[vllm]" in c for c in prepared["setup_commands"])


def test_cluster_yaml_start_commands_and_auth(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head and "--dashboard-host=0.0.0.0" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    # token auth configured the same way on every node (Ray 2.60)
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_there_are_job_configs():
    names = {p.relative_to(ROOT / "jobs").as_posix() for p in JOBS}
    assert {f"{c}/{p}.yaml" for c in MODELS for p in ("cpu", "gpu")} <= names


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.relative_to(ROOT / "jobs").as_posix())
def test_job_config_validates_as_is(path):
    command = path.relative_to(ROOT / "jobs").parts[0]
    cfg = validate_config(MODELS[command], load_yaml(path))
    if path.stem == "gpu" and command == "rl":
        assert cfg.rollout.backend == "vllm" and cfg.rollout.gpus_per_worker == 1
        assert cfg.learner.use_gpu and cfg.learner.engine == "deepspeed" and cfg.learner.zero_stage == 2
    if path.stem == "gpu" and command == "rejuvenate":
        assert cfg.device.startswith("cuda")
    if command == "demo":  # the RLConfig each run gets validates too
        from rayrejuv.commands.demo.driver import rl_config
        from rayrejuv.commands.testbed.driver import WorldLayout
        from rayrejuv.config.runtime import TrackingConfig

        run = rl_config(cfg, WorldLayout(Path("/w")), Path("/w/m"), 0, Path("/w/rl"), TrackingConfig(run_name="rl"))
        assert (run.rollout.backend == "vllm" and run.learner.use_gpu) == (path.stem == "gpu")
    if command == "tune":
        # the probe's RLConfig validates
        probe = cfg.probe.rl_config(Path("/x/rejuvenated"), cfg.train_data, Path("/x/probe"), cfg.seed)
        assert (probe.rollout.backend == "vllm" and probe.learner.use_gpu) == (path.stem == "gpu")


def test_job_configs_are_documented():
    readme = (ROOT / "jobs" / "README.md").read_text()
    for path in JOBS:
        rel = path.relative_to(ROOT).as_posix()
        assert rel in readme, f"{rel} is not shown in jobs/README.md"
