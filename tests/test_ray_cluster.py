"""A two-node Ray cluster on one machine: the spread placement lands workers on both nodes."""

import filecmp

import pytest
from conftest import rejuv_config

from rayrejuv.commands.rejuvenate.driver import rejuvenate


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_spread_uses_both_nodes_and_output_is_identical(two_nodes, make_pair, calibration, tmp_path):
    base, sft = make_pair("qwen3")
    common = dict(calibration=calibration, reset_ratio=0.05, max_shard_gb=40e-6)
    rejuvenate(rejuv_config(base, sft, tmp_path / "ref", **common), progress=False)
    rep = rejuvenate(
        rejuv_config(
            base,
            sft,
            tmp_path / "out",
            ray={"address": two_nodes.address, "workers": 2, "placement": "spread"},
            **common,
        ),
        progress=False,
    )
    assert len(rep["execution"]["nodes"]) == 2
    for f in rep["output"]["files"] + ["config.json", "checksums.json"]:
        assert filecmp.cmp(tmp_path / "ref" / f, tmp_path / "out" / f, shallow=False), f


# None (the default setup: `ray start` turns token auth on, the joining run flips its mode) runs by default;
# "disabled" (50 s on 2 busy cores) with -m slow
@pytest.mark.parametrize("head_auth", [pytest.param("disabled", marks=pytest.mark.slow), None])
def test_joining_a_ray_start_cluster_raises_no_authentication_error(make_pair, tmp_path, head_auth):
    """A user's default setup: ~/.ray/auth_token exists (a local ray.init made it) and a cluster
    was started with `ray start`, which then enables token auth (or has it disabled explicitly).
    `rayrejuv rejuvenate --ray-address` joins it either way. Run as a user would, in fresh
    processes: Ray keeps auth state in the process environment."""
    import json
    import os
    import subprocess
    import sys

    from _ray_local import LocalCluster

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a-local-token")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)
    head_env = {**env, "RAY_AUTH_MODE": head_auth} if head_auth else env
    head = LocalCluster(head_env, tmp_path / "ray-logs", cpus=2)  # our own head: OS ports, own temp dir
    try:
        head.start()
        base, sft = make_pair("llama")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "rayrejuv",
                "rejuvenate",
                "--base",
                str(base),
                "--sft",
                str(sft),
                "--out",
                str(tmp_path / "out"),
                "--fusion-only",
                "--ray-address",
                head.address,
                "--workers",
                "1",
                "--no-track",
                "--quiet",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        report = json.loads((tmp_path / "out" / "rejuvenation_report.json").read_text())
        assert report["execution"]["mode"] == "ray"
    finally:
        head.stop()  # only the processes of this head, by process group and pid (never `ray stop`)
    assert not head.leftovers(), "Ray processes of the test's head survived teardown"
