"""A pool of GRPO workers that serves many runs in turn: rollout actors, the reference actor and
one Ray Train worker group, started once; each run only loads its start.

    queue  = RunQueue                                   runs wait here (distributed/run_queue.py)
    pool   = start_workers(cfg) + TorchTrainer.fit      the fit's train loop (loop.pool_worker) takes
                                                        runs from the queue until it closes
    per run (loop.begin_run): the learner built from the run's start or last checkpoint (a fresh
    optimizer, RNG seeded, step), the reference loaded with the start, the rollout actors synced
    with the learner's weights (rollout.sync: collective, checksummed); checkpoints go to the run's
    own directory (loop.save_checkpoint), metrics through the pool's sink to the run's metrics.jsonl
    and MLflow run.

A run is identical to a run on workers of its own (tests/test_pool.py): nothing of a previous run
survives in what it computes with. Runs share a pool only when they agree on `pool_key`: the
workers' resources and settings, and what the rollout actors keep from the model they started
from (its config, generation config and tokenizer; the weights come with each run's sync).

`rayrejuv rl` is a pool of one run; the demo runs `rl.concurrent` pools side by side (Pools), each
serving the next run of one shared queue.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rayrejuv.commands.rl.config import RLConfig
from rayrejuv.commands.rl.workers import RLWorkers, RunJob, start_workers
from rayrejuv.errors import RejuvError

WAIT = 10.0  # seconds of one long-poll of a run's events
# what the rollout actors keep of the checkpoint they were started from, besides the weights
SIDE_FILES = ("config.json", "generation_config.json")
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "chat_template")
UNKEPT_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")  # the dtype: in rollout.dtype


def policy_signature(model_dir: Path) -> str:
    """sha256 of what an actor started from `model_dir` keeps besides its weights: the model config
    (without its path, version and dtype), the generation config and the tokenizer's files."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).iterdir()):
        if p.name in SIDE_FILES:
            values = {k: v for k, v in json.loads(p.read_text()).items() if k not in UNKEPT_CONFIG}
            h.update(p.name.encode() + json.dumps(values, sort_keys=True).encode())
        elif p.is_file() and p.name.startswith(TOKENIZER_PREFIXES):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def pool_key(cfg: RLConfig) -> str:
    """What a pool's workers are made of (cfg with its `auto` dtypes resolved): runs with the same
    key can share one. Where and how many (placement, learner workers and resources, engine,
    rollout section, reference), and the start's policy_signature."""
    key = {
        "placement": cfg.placement,
        "learner": {"workers": cfg.learner.workers, "use_gpu": cfg.learner.use_gpu,
                    "resources": cfg.learner_resources(), "engine": cfg.learner.resolved_engine()},
        "rollout": cfg.rollout.model_dump(mode="json"),
        "reference": cfg.reference_gpus() if cfg.grpo.beta > 0 else None,
        "policy": policy_signature(cfg.model),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def serve(cfg: RLConfig, workers: RLWorkers, queue, name: str, storage: Path) -> None:
    """The pool's Ray Train fit (loop.pool_worker on every rank) on `workers`, serving `queue`
    until it closes. Ray Train restarts a failed worker group (max_failures), which resumes the run
    it held from its last checkpoint; a fit that fails for good fails that run. `storage`/`name`:
    Ray Train's own state (the runs' checkpoints are in their directories)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrejuv.commands.rl.loop import pool_worker

    learner = cfg.learner
    trainer = TorchTrainer(
        pool_worker,
        train_loop_config={"cpus": learner.cpus_per_worker, "workers": workers, "queue": queue, "pool": name,
                           "key": pool_key(cfg)},
        torch_config=TorchConfig(backend="nccl" if learner.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=learner.workers, use_gpu=learner.use_gpu,
                                     resources_per_worker=cfg.learner_resources(),
                                     label_selector=workers.placement.learner_label_selector()),
        run_config=RunConfig(name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=2)),
    )
    try:
        trainer.fit()
    except Exception as e:
        ray.get(queue.pool_failed.remote(name, f"{type(e).__name__}: {e}"))
        raise


@contextmanager
def serving_in_thread(cfg: RLConfig, workers: RLWorkers, queue, name: str, storage: Path) -> Iterator[None]:
    """serve() in a thread of this process while the block runs (it waits on the queue), the only pool of `queue`."""
    import ray

    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve(cfg, workers, queue, name, storage)
        except BaseException as e:  # re-raised below, in the caller's thread; the one pool: no run is served now
            errors.append(e)
            ray.get(queue.fail_pending.remote(f"{type(e).__name__}: {e}"))

    thread = threading.Thread(target=target, name=f"rayrejuv-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if errors:
        raise errors[0]


def run_on(queue, job: RunJob, on_report: Callable[[dict], None] | None = None, owner: str | None = None) -> Path:
    """Submit `job` to a pool's queue and wait for it; each checkpoint step's metrics go to
    `on_report` as they come. Returns the run's last checkpoint; a run its pool failed raises."""
    import ray

    job_id = uuid.uuid4().hex
    ray.get(queue.submit.remote(job_id, job, owner))
    cursor = 0
    try:
        while True:
            events = ray.get(queue.events.remote(job_id, cursor, WAIT))
            cursor += len(events)
            for kind, value in events:
                if kind == "report" and on_report is not None:
                    on_report(value)
                elif kind == "finished":
                    return Path(value)
                elif kind in ("failed", "cancelled"):
                    raise RejuvError(f"the RL run in {job.cfg['out']} {kind} on its worker pool: {value}")
    except BaseException:  # nobody waits for it now (Tune stopped the trial at a report, Ctrl-C): the pool moves on
        queue.cancel_job.remote(job_id)
        raise


def run_alone(cfg: RLConfig, storage: Path, job: RunJob, on_report: Callable[[dict], None] | None,
              workers: RLWorkers) -> Path:
    """A pool of one run on `workers`: its queue holds `job` alone and closes, so the fit ends with it."""
    import ray

    from rayrejuv.distributed.run_queue import start_queue

    queue = start_queue()
    try:
        with serving_in_thread(cfg, workers, queue, "learner", storage):
            try:
                return run_on(queue, job, on_report)
            finally:
                ray.get(queue.close.remote())
    finally:
        ray.kill(queue)


def serve_pool(cfg_json: dict, queue, name: str, storage: str) -> None:
    """A Ray task that starts one pool's workers for runs like `cfg_json` and serves `queue` until it closes."""
    cfg = RLConfig.model_validate(cfg_json)
    with start_workers(cfg) as workers:
        serve(cfg, workers, queue, name, Path(storage))


class Pools:
    """`count` pools per pool key, each a Ray task serving its key's queue, started for the first
    run of that key; runs go to whichever pool of their key is free first."""

    def __init__(self, count: int, storage: Path):
        self.count, self.storage = count, storage
        self.queues: dict[str, object] = {}
        self.tasks: list = []  # ObjectRefs of the serve_pool tasks: one that ends early has failed

    def queue_for(self, cfg: RLConfig, name: str | None = None):
        """The queue of cfg's key (cfg: `auto` dtypes resolved), its pools started on first use
        (`name`: of the queue actor, for callers that look it up)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from rayrejuv.distributed.run_queue import start_queue

        key = pool_key(cfg)
        if key not in self.queues:
            self.queues[key] = start_queue(name)
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            # a driver on this node (its sink writes the runs' metrics here); its workers hold the CPUs
            task = ray.remote(num_cpus=0, scheduling_strategy=here)(serve_pool)
            base = len(self.tasks)
            self.tasks += [task.remote(cfg.model_dump(mode="json"), self.queues[key], f"pool-{base + i}",
                                       str(self.storage)) for i in range(self.count)]
        return self.queues[key]

    def close(self) -> None:
        """No more runs: each pool ends once its queue is empty; raises a pool's error."""
        import ray

        ray.get([q.close.remote() for q in self.queues.values()])
        try:
            ray.get(self.tasks)
        finally:
            for q in self.queues.values():
                ray.kill(q)

