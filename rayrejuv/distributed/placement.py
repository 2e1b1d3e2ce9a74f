"""Where a GRPO run's actors go: `separate` (each role reserves its own shares wherever Ray finds
room) or `colocated` (the rollout engines, the KL reference and the learner share each GPU: verl's
hybrid engine, OpenRLHF's --colocate_all_models).

OpenRLHF puts every role into one placement group of whole-GPU bundles. Ray Train places the
learner workers in a placement group of its own, so ours holds the rest of each GPU:

    GPU i:  learner worker i (LEARNER_SHARE, Ray Train's group) | bundle i (1 - LEARNER_SHARE):
                                                                  rollout engine i (ROLLOUT_SHARE),
                                                                  bundle 0 also the reference

Ray gives a fractional GPU demand the GPU it fits most tightly (best fit, raylet's
NodeResourceInstanceSet::TryAllocate). A bundle (0.6 > 1/2) never fits beside another on one GPU,
so the bundles take one GPU each; a learner worker (0.4) then fits exactly into the hole a bundle
left (leftover 0, where a free GPU would leave 0.6): one learner worker per GPU, as NCCL needs.
Each learner worker is also pinned to its bundle's node (Ray Train's label_selector on
`ray.io/node-id`), so the pairs hold across nodes. The shares are logical (what Ray counts): real
memory is what each process allocates (vLLM: gpu_memory_utilization; it sleeps while the learner
trains). On CPU-only runs the bundles hold CPUs alone: each rollout engine runs on a learner
worker's node, the reference on the first, and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEARNER_SHARE = 0.4  # of each colocated GPU, for its learner worker: below 1/2 (see above)
ROLLOUT_SHARE = 0.4  # of bundle i's 0.6, for rollout engine i
REFERENCE_SHARE = 0.2  # of bundle 0's 0.6, for the reference actor


def colocated_bundles(workers: int, rollout_cpus: float, reference_cpus: float, gpu: bool) -> list[dict[str, float]]:
    """Bundle i: rollout engine i's CPUs (bundle 0: + the reference's) and, on GPUs, the part of
    GPU i that its learner worker leaves."""
    share = {"GPU": 1.0 - LEARNER_SHARE} if gpu else {}
    return [{"CPU": rollout_cpus + (reference_cpus if i == 0 else 0.0)} | share for i in range(workers)]


class Separate:
    """No placement group: each role reserves what its config says, outside any caller's group."""

    def __init__(self, rollout_workers: int):
        self.rollout_workers = rollout_workers

    def rollout_options(self) -> list[dict]:
        return [{} for _ in range(self.rollout_workers)]

    def reference_options(self) -> dict:
        return {}

    def learner_label_selector(self) -> list[dict[str, str]] | None:
        return None

    def remove(self) -> None:
        pass


@dataclass
class Colocation:
    """A ready colocated placement group (one bundle per learner worker) and each role's Ray options in it."""

    group: Any  # ray.util.placement_group.PlacementGroup
    gpu: bool

    def _in_bundle(self, index: int, share: float) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"num_gpus": share if self.gpu else 0.0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)}

    def rollout_options(self) -> list[dict]:
        """Rollout engine i: ROLLOUT_SHARE of bundle i's GPU."""
        return [self._in_bundle(i, ROLLOUT_SHARE) for i in range(self.group.bundle_count)]

    def reference_options(self) -> dict:
        return self._in_bundle(0, REFERENCE_SHARE)

    def learner_label_selector(self) -> list[dict[str, str]]:
        """Ray Train's per-worker label selectors: worker i on bundle i's node."""
        from ray.util.placement_group import NODE_ID_LABEL_KEY, placement_group_table

        nodes = placement_group_table(self.group)["bundles_to_node_id"]
        return [{NODE_ID_LABEL_KEY: nodes[i]} for i in range(self.group.bundle_count)]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def colocate(workers: int, rollout_cpus: float, reference_cpus: float, gpu: bool) -> Colocation:
    """Reserve the colocated bundles (PACK: one node where they fit) and wait until they are placed."""
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(colocated_bundles(workers, rollout_cpus, reference_cpus, gpu), strategy="PACK")
    ray.get(group.ready())
    return Colocation(group, gpu)


def start_placement(kind: str, rollout_workers: int, rollout_cpus: float, reference_cpus: float, gpu: bool):
    """`separate` or `colocated` (RLConfig.placement; colocated: one rollout engine per learner worker)."""
    placements = {"separate": lambda: Separate(rollout_workers),
                  "colocated": lambda: colocate(rollout_workers, rollout_cpus, reference_cpus, gpu)}
    return placements[kind]()
