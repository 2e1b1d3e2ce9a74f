"""Run a command as the child of this small process and report its exact ru_maxrss.

Usage: python -I -S maxrss_launcher.py RESULT_JSON -- COMMAND [ARG...]

Linux carries a process's RSS high-water mark across fork and exec, so a command
forked straight from the (large) benchmark process would inherit the benchmark's RSS
as its ``ru_maxrss``. Forking from this launcher instead, which imports nothing but
``os``/``sys``/``json``/``time`` (~10 MB), keeps that inherited floor negligible.

RESULT_JSON receives ``{"returncode", "wall_s", "cpu_s", "ru_maxrss_kib"}``: wall
time runs from just before fork to the reaping of the child; ``cpu_s`` (user + system)
and ``ru_maxrss_kib`` cover the command and every descendant it reaped, the latter
being the largest RSS of any one of them (a max over single processes, not a sum).
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        except OSError as error:
            print(f"maxrss_launcher: cannot run {command[0]}: {error}", file=sys.stderr)
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall_s = time.perf_counter() - started
    returncode = os.waitstatus_to_exitcode(status)
    with open(result_path, "w") as f:
        json.dump({"returncode": returncode, "wall_s": wall_s,
                   "cpu_s": usage.ru_utime + usage.ru_stime,
                   "ru_maxrss_kib": usage.ru_maxrss}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
