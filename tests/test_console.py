"""What a person sees: one line per RL run read from its metrics.jsonl, Ray's and the workers' logs
in files under OUT (the terminal with --verbose)."""

import io
import json
import logging
import time

import pytest
from rich.console import Console

from rayrejuv.config.runtime import RayConfig
from rayrejuv.runs.console import RAY_LOG, WORKERS_LOG, MetricsTail, RunLine, RunLines, run_lines, runs_under


def _step(step: int, reward: float, seconds: float = 2.0) -> str:
    return json.dumps({"step": step, "reward/mean": reward, "time/step": seconds}) + "\n"


def test_metrics_tail_reads_new_steps_only_and_starts_over_when_truncated(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.poll() is None  # no file yet: not started
    path.write_text(json.dumps({"step": 0, "eval/pass_at_1": 0.5}) + "\n" + _step(1, 0.25, 3.0))
    assert tail.poll()["step"] == 1 and (tail.steps, tail.seconds) == (1, 3.0)  # the eval record is not a step
    with open(path, "a") as f:
        f.write(_step(2, -0.5, 1.0) + '{"step": 3, "rew')  # a line half written: left for the next poll
    assert tail.poll()["reward/mean"] == -0.5 and (tail.steps, tail.seconds) == (2, 4.0)
    with open(path, "a") as f:
        f.write('ard/mean": 0.75, "time/step": 2.0}\n')
    assert tail.poll()["reward/mean"] == 0.75 and tail.steps == 3
    path.write_text(_step(1, 0.125))  # a resumed run truncated it to its checkpoint's step
    assert tail.poll()["step"] == 1 and (tail.steps, tail.seconds) == (1, 2.0)


def test_lines_say_name_step_reward_pace_and_a_log_file_gets_start_and_end_once(tmp_path):
    a, b, c = (RunLine(f"run {x} seed 0", tmp_path / x / "metrics.jsonl", 3) for x in "abc")
    for r in (a, b, c):
        r.metrics.parent.mkdir()
    c.metrics.write_text(_step(1, 0.0) + _step(2, 0.0) + _step(3, 0.5))  # finished before: its end line only
    out = io.StringIO()
    lines = RunLines(lambda: [a, b, c], Console(file=out, width=200))
    lines.refresh(None)
    assert out.getvalue() == "run c seed 0  step 3/3  reward +0.500  done\n"
    a.metrics.write_text(_step(1, 0.25, 3.0))
    lines.refresh(None)
    lines.refresh(None)  # nothing new: nothing printed
    a.metrics.write_text(_step(1, 0.25, 3.0) + _step(2, 0.5, 1.0))
    lines.refresh(None)  # a step within a run: no line in a log file
    assert out.getvalue().splitlines()[1:] == ["run a seed 0  step 1/3  reward +0.250  3.0 s/step"]
    assert lines.text() == ("RL runs: 1/3 done\nrun a seed 0  step 2/3  reward +0.500  2.0 s/step\n"
                            "run c seed 0  step 3/3  reward +0.500  done")  # b has not stepped: no line yet
    with open(a.metrics, "a") as f:
        f.write(_step(3, -1.0))
    lines.refresh(None)
    assert out.getvalue().splitlines()[2:] == ["run a seed 0  step 3/3  reward -1.000  done"]


def test_run_lines_thread_follows_runs_found_while_the_body_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rayrejuv.runs.console.POLL_S", 0.05)
    find = runs_under(tmp_path, "*/probe/metrics.jsonl", 2, lambda p: f"trial {p.parent.parent.name}")
    with run_lines(find) as lines:  # captured stdout: not a terminal, so lines as runs start and end
        (tmp_path / "t1" / "probe").mkdir(parents=True)
        (tmp_path / "t1" / "probe" / "metrics.jsonl").write_text(_step(1, 0.5))
        time.sleep(0.5)
        (tmp_path / "t1" / "probe" / "metrics.jsonl").write_text(_step(1, 0.5) + _step(2, 1.0))
    assert capsys.readouterr().out.splitlines() == ["trial t1  step 1/2  reward +0.500  2.0 s/step",
                                                    "trial t1  step 2/2  reward +1.000  done"]
    assert not lines.states or all(s.done for s in lines.states.values())
    with run_lines(find, enabled=False) as nothing:
        assert nothing is None


def test_verbose_keeps_the_logs_on_the_terminal(tmp_path):
    assert RayConfig().log_dir(tmp_path) == tmp_path / "logs"
    assert RayConfig(verbose=True).log_dir(tmp_path) is None


def _wait_for_text(path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never reached {path}: {path.read_text() if path.is_file() else 'no file'}")


def test_ray_session_puts_ray_and_worker_output_into_files_under_out(tmp_path, capfd):
    import ray
    import ray._private.worker as ray_worker

    from rayrejuv.runs.cluster import ray_session
    from rayrejuv.runs.kernels import cpu_kernels, kernel_env

    logs = tmp_path / "out" / "logs"
    ray_logger, resort, printer = logging.getLogger("ray"), logging.lastResort, ray_worker.print_to_stdstream

    @ray.remote(num_cpus=0)
    def noisy():
        import sys

        print("task says hello")
        print("task complains", file=sys.stderr)

    @ray.remote(num_cpus=0)
    class Loud:
        def speak(self):
            print("actor says hello")

    @ray.remote(num_cpus=0)
    def kernels():
        from rayrejuv.runs.kernels import cpu_kernels

        return cpu_kernels()

    with pytest.raises(RuntimeError, match="the run failed"), ray_session(None, 1, logs):
        ray.get(noisy.remote())
        # every worker of the job (of a cluster's other machines too) runs the driver's pinned kernels
        assert ray.get_runtime_context().runtime_env["env_vars"] == kernel_env() != {}
        assert ray.get(kernels.remote()) == cpu_kernels() == "AVX2/mkl:AVX2"
        actor = Loud.options(name="loud").remote()
        ray.get(actor.speak.remote())
        logging.getLogger("ray.train.v2._internal.test").warning("Failed to query Ray Train Controller actor state.")
        ray_worker.print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes"], "pid": "raylet",
                                       "is_err": False}, ignore_prefix=False)  # as Ray's error listener does
        workers = _wait_for_text(logs / WORKERS_LOG, "actor says hello")
        _wait_for_text(logs / WORKERS_LOG, "task complains")
        raise RuntimeError("the run failed")  # the logs are named, Ray's handlers back, on any exit
    assert not ray.is_initialized()
    terminal = capfd.readouterr()
    for text in ("hello", "complains", "Failed to query", "PYTHON worker processes"):
        assert text not in terminal.out + terminal.err, terminal
    assert "(raylet) WARNING: 8 PYTHON worker processes" in workers.splitlines()
    assert terminal.err.strip().splitlines()[-1].startswith(f"Ray and worker logs: {logs}/ ({RAY_LOG}, {WORKERS_LOG}")
    lines = workers.splitlines()
    assert any(line.startswith("(noisy pid=") and line.endswith(") task says hello") for line in lines), lines
    assert any(line.startswith("(Loud pid=") and ", ip=" in line and line.endswith(") actor says hello")
               for line in lines), lines
    ray_log = (logs / RAY_LOG).read_text()
    assert "WARNING ray.train.v2._internal.test: Failed to query Ray Train Controller actor state." in ray_log
    assert ray_worker.print_to_stdstream is printer
    assert logging.lastResort is resort and not [h for h in ray_logger.handlers if isinstance(h, logging.FileHandler)]
