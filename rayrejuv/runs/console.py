"""What a person sees while runs go on Ray: one live line per RL run, and Ray's logs kept off the terminal.

    run_lines(find)              a thread polls find() (the RL runs so far) and each run's
                                 metrics.jsonl, which its MetricsSink writes on this (the driver's)
                                 node; one line per started run: name, step/steps, reward, s/step
    ray_loggers_to(path, start)  the driver's `ray.*` loggers (ray.train, ray.tune, Ray's own init
                                 and auth messages) into a file instead of stderr
    worker_output_to(path)       every Ray worker's forwarded stdout/stderr (actors, tasks, Ray
                                 Train's controller and workers, on every node of the job) into a file

ray_session (runs/cluster.py) applies the last two unless the command is verbose.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY_LOG = "ray.log"  # the driver's ray.* loggers
WORKERS_LOG = "workers.log"  # the workers' stdout/stderr, one "(name pid=.., ip=..) line" per line
POLL_S = 1.0  # seconds between two reads of the runs' metrics


@dataclass(frozen=True)
class RunLine:
    """An RL run to show: its name ("OverSFT + Rejuvenation seed 1"), its metrics.jsonl, its steps."""

    name: str
    metrics: Path
    steps: int


@dataclass
class MetricsTail:
    """The GRPO step records of a growing metrics.jsonl, read incrementally (from the start again
    when the file shrank: a resumed run truncates it to its checkpoint's step)."""

    path: Path
    offset: int = 0
    last: dict | None = None  # the last record with a reward: {"step", "reward/mean", "time/step", ...}
    seconds: float = 0.0  # time/step summed over the records read
    steps: int = 0  # records read

    def poll(self) -> dict | None:
        if not self.path.is_file():
            return self.last
        if self.path.stat().st_size < self.offset:
            self.offset, self.last, self.seconds, self.steps = 0, None, 0.0, 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written stays for the next poll
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "reward/mean" in record:  # not the step-0 evaluation's record
                self.last, self.seconds, self.steps = record, self.seconds + record["time/step"], self.steps + 1
        return self.last


@dataclass
class LineState:
    run: RunLine
    tail: MetricsTail
    printed: set[str] = field(default_factory=set)  # "start", "end": the lines a log file already got

    @property
    def step(self) -> int | None:
        return None if self.tail.last is None else self.tail.last["step"]

    @property
    def done(self) -> bool:
        return self.step is not None and self.step >= self.run.steps

    def text(self) -> str:
        """'OverSFT seed 1  step 12/40  reward +0.281  3.1 s/step' (finished: 'done')."""
        pace = "done" if self.done else f"{self.tail.seconds / max(1, self.tail.steps):.1f} s/step"
        reward = self.tail.last["reward/mean"]
        return f"{self.run.name}  step {self.step}/{self.run.steps}  reward {reward:+.3f}  {pace}"

    def news(self) -> str | None:
        """For a log file: the line to print now (as the run starts, and as it ends), once each."""
        event = "end" if self.done else "start" if self.step is not None else None
        if event is None or event in self.printed:
            return None
        self.printed |= {"start", event}  # a run first seen finished gets its end line only
        return self.text()


@dataclass
class RunLines:
    """The lines of the runs `find()` returns, polled every POLL_S by a thread: live on a terminal
    (rich), else one printed line as each run starts and as it ends (a log file stays readable)."""

    find: Callable[[], list[RunLine]]
    console: object  # rich.console.Console
    states: dict[Path, LineState] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    shown: str = ""  # what the live display shows now

    def poll(self) -> list[LineState]:
        """Every run found so far, its metrics read up to now; in the order found."""
        for run in self.find():
            self.states.setdefault(run.metrics, LineState(run, MetricsTail(run.metrics)))
        for state in self.states.values():
            state.tail.poll()
        return list(self.states.values())

    def follow(self, live) -> None:
        """The thread: poll until stopped, then once more (the last steps are shown)."""
        while not self.stop.wait(POLL_S):
            self.refresh(live)
        self.refresh(live)

    def refresh(self, live) -> None:
        states = self.poll()
        if live is None:
            for news in filter(None, (s.news() for s in states)):
                self.console.print(news, highlight=False, soft_wrap=True)
        elif self.text() != self.shown:  # redrawn when a run stepped, not on every poll
            self.shown = self.text()
            live.update(self.renderable(), refresh=True)

    def text(self) -> str:
        """'RL runs: 3/8 done' (of those found so far), then a line per run that has stepped."""
        started = [s for s in self.states.values() if s.step is not None]
        done = sum(s.done for s in self.states.values())
        head = f"RL runs: {done}/{len(self.states)} done" if self.states else ""
        return "\n".join([head] + [s.text() for s in started]) if started else head

    def renderable(self):
        from rich.text import Text

        return Text(self.text())


@contextmanager
def run_lines(find: Callable[[], list[RunLine]], enabled: bool = True) -> Iterator[RunLines | None]:
    """While the body runs, one line per RL run that `find()` returns once it has made a step
    (`enabled` False: nothing shown). A terminal's lines stay on the screen when the body ends."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    lines = RunLines(find, console)
    live = Live(lines.renderable(), console=console, auto_refresh=False, transient=False) if console.is_terminal \
        else None  # fmt: skip
    thread = threading.Thread(target=lines.follow, args=(live,), name="rayrejuv-run-lines", daemon=True)
    if live is not None:
        live.start()
    thread.start()
    try:
        yield lines
    finally:
        lines.stop.set()
        thread.join()
        if live is not None:
            live.stop()


def runs_under(root: Path, pattern: str, steps: int, name: Callable[[Path], str]) -> Callable[[], list[RunLine]]:
    """A `find` for run_lines: every metrics.jsonl under `root` matching `pattern`, named by `name(path)`."""
    return lambda: [RunLine(name(p), p, steps) for p in sorted(Path(root).glob(pattern))]


@contextmanager
def ray_loggers_to(path: Path, start: Callable[[], None]) -> Iterator[Path]:
    """Run `start` (ray.init), then the body, with the driver's ray.* loggers writing to `path`
    (appended) instead of stderr. ray.init(configure_logging=False) clears the `ray` logger's
    handlers, then logs its own messages (the auth mode, the local instance), which with no handler
    reach logging.lastResort (stderr): during `start` the file's handler is lastResort; after it,
    the `ray` logger's (every ray.* logger propagates to it; Ray stops it propagating to the root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    resort, logging.lastResort = logging.lastResort, handler
    try:
        start()
    finally:
        logging.lastResort = resort
    logger = logging.getLogger("ray")
    saved = logger.handlers[:]
    for h in saved:
        logger.removeHandler(h)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h in saved:
            logger.addHandler(h)


def worker_line_prefix(batch: dict) -> str:
    """'(RolloutWorker pid=123, ip=10.0.0.1) ', as Ray prefixes a forwarded line on the terminal;
    '(raylet) ' for Ray's own messages (worker start-up warnings, a worker's death)."""
    if batch.get("pid") in ("raylet", "autoscaler"):  # Ray's dicts: any field may be missing (Ray reads them so)
        return f"({batch['pid']}) "
    name = batch.get("actor_name") or batch.get("task_name") or ""
    return f"({name + ' ' if name else ''}pid={batch.get('pid')}, ip={batch.get('ip')}) "


@contextmanager
def worker_output_to(path: Path) -> Iterator[Path]:
    """What Ray's driver prints of the cluster into `path` (appended) until the body ends: every
    worker's forwarded stdout/stderr (ray.init(log_to_driver=True): the lines of every node of the
    job come to the driver, through one dispatcher handler, "ray_print_logs", replaced here; ray.shutdown
    removes it by that name) and Ray's error messages (its error listener prints them with
    ray._private.worker.print_to_stdstream, replaced here). log_to_driver=False would stop the
    forwarding instead, and leave the lines in each node's Ray session directory."""
    import ray._private.worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    path.parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "a", buffering=1)  # line-buffered: the file is readable while the run goes on
    lock = threading.Lock()

    def write(batch: dict, ignore_prefix: bool = False) -> None:  # print_to_stdstream's signature
        lines = batch.get("lines", [])
        if batch.get("pid") == "autoscaler":  # its events only, as Ray's handler does (not its status every 5 s)
            lines = list(ray_worker.filter_autoscaler_events(lines))
        prefix = worker_line_prefix(batch)
        with lock:
            if not out.closed:
                out.writelines(prefix + line + "\n" for line in lines)

    printer, ray_worker.print_to_stdstream = ray_worker.print_to_stdstream, write
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", write)
    try:
        yield path
    finally:
        dispatcher.remove_handler("ray_print_logs")
        ray_worker.print_to_stdstream = printer
        with lock:
            out.close()
