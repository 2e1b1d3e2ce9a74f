"""A group of LayerShard actors: contiguous shard ranges, one task per shard, restarts on failure."""

from __future__ import annotations

from collections import defaultdict

from tqdm.auto import tqdm

from rayrejuv.config.runtime import RayConfig
from rayrejuv.distributed.faults import fault_env
from rayrejuv.distributed.layer_shard import ShardResult, ShardWorker
from rayrejuv.distributed.partition import contiguous_ranges
from rayrejuv.io.writer import ShardPlan
from rayrejuv.rejuvenation.job import RejuvenationJob


class LayerShardGroup:
    """Drivers call map(); they never see actors or ranks."""

    def __init__(self, job: RejuvenationJob, num_workers: int, rc: RayConfig):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        cpus, gpus = rc.cpus_per_worker, rc.gpus_per_worker
        bundles = [{"CPU": cpus, **({"GPU": gpus} if gpus else {})} for _ in range(num_workers)]
        self.pg = placement_group(bundles, strategy=rc.placement.upper())  # PACK / SPREAD
        ray.get(self.pg.ready())
        actor = ray.remote(ShardWorker)
        hooks = fault_env()
        self.actors = [
            actor.options(
                runtime_env={"env_vars": hooks} if hooks else None,
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=rc.max_restarts,
                max_task_retries=rc.max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(job, cpus)  # each sizes its torch threads to its CPUs
            for i in range(num_workers)
        ]

    def nodes(self) -> list[str]:
        return self._ray.get([a.node.remote() for a in self.actors])

    def map(
        self, method: str, plans: list[ShardPlan], args: list[tuple], desc: str, progress: bool
    ) -> list[ShardResult]:
        """Run `method(plan, *args[i])` for shard i on the actor owning its range; results in plan order."""
        owners = {}
        for a, r in zip(self.actors, contiguous_ranges([p.nbytes for p in plans], len(self.actors))):
            owners.update({i: a for i in r})
        refs = {getattr(owners[i], method).remote(p, *args[i]): i for i, p in enumerate(plans)}
        results: dict[int, ShardResult] = {}
        with tqdm(
            total=sum(p.nbytes for p in plans), desc=desc, unit="B", unit_scale=True, disable=not progress
        ) as bar:
            pending = list(refs)
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                i = refs[done[0]]
                results[i] = self._ray.get(done[0])
                bar.update(plans[i].nbytes)
        return [results[i] for i in range(len(plans))]

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            self._ray.kill(a)
        remove_placement_group(self.pg)


def per_worker_seconds(results: list[ShardResult]) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(
        lambda: {"shards": 0, "seconds": 0.0, "reused": 0, "peak_rss_mb": 0.0, "threads": 0}
    )
    for r in results:
        w = out[r.worker]
        w["shards"] += 1
        w["seconds"] += r.seconds
        w["reused"] += int(r.reused)
        w["peak_rss_mb"] = max(w["peak_rss_mb"], r.peak_rss_mb)
        w["threads"] = max(w["threads"], r.threads)
    return dict(out)
