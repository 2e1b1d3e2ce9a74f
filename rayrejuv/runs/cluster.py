"""Connect to a Ray cluster, or start a local one for the run, with token auth handled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rayrejuv.errors import RejuvError
from rayrejuv.runs.console import RAY_LOG, WORKERS_LOG, ray_loggers_to, worker_output_to
from rayrejuv.runs.kernels import kernel_env
from rayrejuv.runs.resources import local_cpus

AUTH_ENV = "RAY_AUTH_MODE"
# A local instance lives for one run: no worker prestart (Ray would start a worker process per
# logical CPU at the first driver; the run's actors start their own) and no metrics collection
# (no dashboard to show them). Measured on 2 cores, ray.init + 2 actors + shutdown, median of 4:
# 14.95 s -> 13.87 s. (include_dashboard=False already; the log monitor, dashboard agent and
# runtime-env agent cannot be turned off through ray.init.)
LOCAL_SYSTEM_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                       "enable_metrics_collection": False}  # fmt: skip


def _flip_auth_mode() -> str:
    """Switch this process to the other auth mode (Ray reads RAY_AUTH_MODE at init)."""
    from ray._private.authentication.authentication_token_setup import Config

    mode = "disabled" if os.environ.get(AUTH_ENV, "").lower() == "token" else "token"
    os.environ[AUTH_ENV] = mode
    Config.initialize("")
    return mode


def cluster_address(address: str | None) -> str | None:
    """The cluster a run joins: --ray-address, else $RAY_ADDRESS, else None (a local instance)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextmanager
def ray_session(address: str | None, cpu_demand: float = 0.0, logs: Path | None = None) -> Iterator[dict]:
    """Yield the cluster's resources. With no address (and no RAY_ADDRESS) a local instance is
    started for the run, with the CPUs the run reserves (`cpu_demand`, at least the machine's
    cores), and shut down after; otherwise the run joins the given cluster.

    `logs`: a directory for what Ray prints (console.RAY_LOG: the driver's ray.* loggers;
    console.WORKERS_LOG: every worker's forwarded stdout/stderr), named on stderr when the session
    ends; None: all of it on the terminal (a command's --verbose). A process already connected to
    Ray (a demo's RL task, a Tune trial) keeps its driver's setup.

    Ray 2.60 turns token auth on for a local ray.init() and for `ray start` when
    ~/.ray/auth_token exists, but a joining client with RAY_AUTH_MODE unset connects without the
    token and fails (as AuthenticationError or as a bare "Failed to connect"). We retry once
    with the other mode, so a default setup just works.
    """
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    address = cluster_address(address)
    with ExitStack() as session:
        if logs is None:
            _start(ray, address, cpu_demand)
        else:  # ray.init's own messages (auth mode, local instance) go to the file too
            session.callback(_name_logs, logs)
            session.enter_context(ray_loggers_to(logs / RAY_LOG, lambda: _start(ray, address, cpu_demand)))
            session.enter_context(worker_output_to(logs / WORKERS_LOG))
        session.callback(ray.shutdown)  # first on the way out: the forwarding stops before its file closes
        yield ray.cluster_resources()


def _start(ray, address: str | None, cpu_demand: float) -> None:
    # the workers run the driver's CPU kernels (runs.kernels), on this machine and on a cluster's others
    kwargs = {"log_to_driver": True, "configure_logging": False, "runtime_env": {"env_vars": kernel_env()}}
    if address:
        _join(ray, address, kwargs)
    else:
        # address="local": a new instance even where a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=local_cpus(cpu_demand), include_dashboard=False,
                 _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)  # fmt: skip


def _name_logs(logs: Path) -> None:
    print(f"Ray and worker logs: {logs}/ ({RAY_LOG}, {WORKERS_LOG}; --verbose shows them here)", file=sys.stderr)


def _join(ray, address: str, kwargs: dict) -> None:
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, **kwargs)
        return
    except (AuthenticationError, ConnectionError) as e:
        first = e
    ray.shutdown()
    mode = _flip_auth_mode()
    try:
        ray.init(address=address, **kwargs)
    except (AuthenticationError, ConnectionError) as second:
        ray.shutdown()
        raise RejuvError(
            f"cannot join the Ray cluster at {address} with either auth mode ({first}; then, with {AUTH_ENV}={mode}, "
            f"{second}); "
            f"check --ray-address, and set {AUTH_ENV} and RAY_AUTH_TOKEN to the cluster's"
        ) from None
