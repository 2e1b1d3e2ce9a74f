"""A two-node Ray cluster on one machine: the spread placement lands workers on both nodes."""

import filecmp

import pytest
from conftest import rejuv_config

from rayrejuv.pipelines.rejuvenate import rejuvenate


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
