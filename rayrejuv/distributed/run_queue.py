"""A queue of runs that long-lived worker pools serve in turn, and the runs' way back to whoever
submitted them. One asyncio actor; every wait is a bounded long-poll, so no caller blocks forever.

    submitter                         RunQueue                          pool p (its rank 0)
    submit(id, job, owner)  ->        pending                     <-    take(p): the job p holds, else the next
    events(id, cursor)      <-        reports, then the outcome   <-    report(id, m) ... finish(id, result)
    cancel(owner), cancel_job(id) ->  cancelled                   <-    stopped(id) (each step)
                                                                  <-    pool_failed(p, error): its fit died

A pool whose worker group restarted asks again and gets the job it held (it resumes it from the
run's last checkpoint); a job ends once: finished, failed or cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CLOSED = "closed"  # what take() returns once the queue is closed and empty: the pool stops
ENDS = ("finished", "failed", "cancelled")  # the last event of a job


@dataclass
class _Job:
    payload: Any
    owner: str | None
    events: list[tuple[str, Any]] = field(default_factory=list)  # ("report", metrics), then one of ENDS
    pool: str | None = None  # who serves it

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1][0] in ENDS


class RunQueue:
    def __init__(self):
        self.jobs: dict[str, _Job] = {}
        self.pending: deque[str] = deque()
        self.held: dict[str, str] = {}  # pool -> the job it serves
        self.closed = False
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait(self, ready, timeout: float) -> bool:
        """Wait until ready() or timeout; returns ready()."""
        deadline = time.monotonic() + timeout
        async with self.changed:
            while not ready() and (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self.changed.wait(), left)
                except TimeoutError:
                    break
            return ready()

    async def submit(self, job_id: str, payload: Any, owner: str | None = None) -> None:
        if self.closed:
            raise RuntimeError("the run queue is closed: its pools have stopped")
        self.jobs[job_id] = _Job(payload, owner)
        self.pending.append(job_id)
        await self._notify()

    async def take(self, pool: str, timeout: float) -> tuple[str, Any] | str | None:
        """(job id, payload) for `pool`: the unfinished job it holds (a restarted worker group), else the
        next pending one; None when none came within `timeout`; CLOSED when closed and nothing is left."""
        held = self.held.get(pool)
        if held is not None and not self.jobs[held].ended:
            return held, self.jobs[held].payload
        await self._wait(lambda: self.pending or self.closed, timeout)
        if not self.pending:
            return CLOSED if self.closed else None
        job_id = self.pending.popleft()
        self.held[pool], self.jobs[job_id].pool = job_id, pool
        return job_id, self.jobs[job_id].payload

    async def _end(self, job_id: str, kind: str, value: Any) -> None:
        job = self.jobs[job_id]
        if not job.ended:
            job.events.append((kind, value))
        if job_id in self.pending:
            self.pending.remove(job_id)
        await self._notify()

    async def report(self, job_id: str, metrics: dict) -> None:
        if not self.jobs[job_id].ended:
            self.jobs[job_id].events.append(("report", metrics))
            await self._notify()

    async def finish(self, job_id: str, result: Any) -> None:
        await self._end(job_id, "finished", result)

    async def fail(self, job_id: str, error: str) -> None:
        await self._end(job_id, "failed", error)

    async def pool_failed(self, pool: str, error: str) -> None:
        """`pool` died (its fit failed): the job it held fails with `error`."""
        held = self.held.pop(pool, None)
        if held is not None:
            await self._end(held, "failed", error)

    async def fail_pending(self, error: str) -> None:
        """No pool is left to serve them: every pending job fails with `error`."""
        for job_id in list(self.pending):
            await self._end(job_id, "failed", error)

    async def cancel(self, owner: str) -> int:
        """End every unfinished job of `owner` (a pending one never starts; a running one stops at
        its next step); returns how many."""
        ids = [i for i, j in self.jobs.items() if j.owner == owner and not j.ended]
        for job_id in ids:
            await self._end(job_id, "cancelled", None)
        return len(ids)

    async def cancel_job(self, job_id: str) -> None:
        """Its submitter is gone (a stopped Tune trial, Ctrl-C): the job ends, its pool moves on."""
        await self._end(job_id, "cancelled", None)

    async def stopped(self, job_id: str) -> bool:
        """The running job has ended without its pool (cancelled): the pool drops it."""
        return self.jobs[job_id].ended

    async def events(self, job_id: str, cursor: int, timeout: float) -> list[tuple[str, Any]]:
        """The job's events from index `cursor` on, waiting up to `timeout` for one."""
        job = self.jobs[job_id]
        await self._wait(lambda: len(job.events) > cursor, timeout)
        return job.events[cursor:]

    async def close(self) -> None:
        """No more submissions: each pool stops once nothing is pending."""
        self.closed = True
        await self._notify()


def start_queue(name: str | None = None):
    """The queue actor, pinned to this node (it holds the jobs' payloads: small; no CPU)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    options = {"num_cpus": 0, "scheduling_strategy": here} | ({"name": name} if name else {})
    return ray.remote(RunQueue).options(**options).remote()
