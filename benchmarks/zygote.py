"""Warm worker processes: a helper process imports the worker once and forks a clean child per job.

Starting ``python -m benchmarks.worker`` for every job pays the import of torch, Lightning and anomalib
each time (7 to 9 s on a 2-core CPU, some 13 minutes over the 88 jobs of the issue-15 run). The zygote
is started once per run: it imports the worker module and then, for each job, forks a child that runs
``worker.main([job_file])`` with its output in the job's log. Each job is still a process of its own
(a crash, a leak or a hang cannot take the run down; peak memory is the job's own) and leads a process
group of its own, so that a kill at the timeout also ends what the job started (the OpenVINO
measurement runs in a subprocess that would otherwise go on beside the next job).

Two simpler designs fail, and are why this module exists:

- Forking the runner itself: a child forked from a process whose OpenMP thread pool has ever run hangs
  in its first parallel kernel (GNU OpenMP is not fork-safe). The runner may be such a process (a test
  session, a notebook); the zygote never runs a torch operation.
- :mod:`multiprocessing`'s forkserver: one per interpreter (its preload is fixed by whoever starts it
  first), and it reaps its children itself, so their CPU time would be lost to the runner's accounting of
  what else the machine did (``others_cpu_s``). The zygote reports each child's CPU time from ``wait4``.

Protocol, one JSON object per line: the runner writes ``{"job_file", "log_file"}`` to the zygote's
stdin; the zygote answers ``{"ready": true}`` once after the import, ``{"pid": ...}`` after each fork
and ``{"exit": status, "cpu_s": seconds}`` once the child has ended (a signal gives a negative status).
The zygote ends when its stdin closes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.profiles import PROJECT_ROOT


def worker_env() -> dict[str, str]:
    """Environment of a worker process: the runner's ``sys.path`` as ``PYTHONPATH``, the hub offline by default."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    env.setdefault("HF_HUB_OFFLINE", "1")  # the hub reads it once, at import
    return env


class ZygoteError(RuntimeError):
    """The zygote could not import the worker, or ended unexpectedly."""


class Zygote:
    """Runner side: starts the zygote, forks jobs through it and waits for them.

    Args:
        worker: Module whose ``main([job_file])`` runs one job and returns its exit status.
        log_file: Where the zygote's own output goes (the import's warnings); the jobs' go to their logs.

    Raises:
        ZygoteError: The worker module cannot be imported; the message ends with the zygote's log.
    """

    def __init__(self, worker: str, log_file: Path) -> None:
        env = worker_env()
        with Path(log_file).open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.zygote", worker],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=PROJECT_ROOT,
                env=env,
            )
        self._buffer = b""
        try:
            ready = self._message(None)
        except ZygoteError:
            ready = None
        if ready != {"ready": True}:
            tail = "\n".join(Path(log_file).read_text(errors="replace").strip().splitlines()[-15:])
            msg = f"the benchmark worker module {worker!r} could not be loaded; the end of {log_file}:\n{tail}"
            raise ZygoteError(msg)

    def start(self, job_file: Path, log_file: Path) -> ForkedJob:
        """Fork a child for ``job_file``; its output goes to ``log_file``."""
        request = json.dumps({"job_file": str(job_file), "log_file": str(log_file)}) + "\n"
        self.process.stdin.write(request.encode())
        self.process.stdin.flush()
        return ForkedJob(self, int(self._message(None)["pid"]))

    def close(self) -> None:
        """End the zygote (it exits when its stdin closes)."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _message(self, timeout: float | None) -> dict[str, Any] | None:
        """The zygote's next message, or ``None`` when none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not select.select([descriptor], [], [], remaining)[0]:
                return None
            chunk = os.read(descriptor, 65536)
            if not chunk:  # its stdout closed: it has ended, or is ending
                msg = f"the benchmark zygote ended unexpectedly (exit status {self.process.wait()})."
                raise ZygoteError(msg)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


class ForkedJob:
    """One running job: :meth:`wait` for it, :meth:`kill` it; ``cpu_s`` once it has ended."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.cpu_s = 0.0
        self.exitcode: int | None = None

    def wait(self, timeout: float | None) -> int | None:
        """Exit status (negative: killed by that signal), or ``None`` while it runs after ``timeout`` s."""
        if self.exitcode is None and (message := self.zygote._message(timeout)) is not None:
            self.exitcode, self.cpu_s = int(message["exit"]), float(message["cpu_s"])
        return self.exitcode

    def kill(self) -> None:
        """Kill the job and every process it started (its process group), and wait for the zygote to reap it."""
        if self.exitcode is None:
            kill_group(self.pid)
            self.wait(None)


def kill_group(leader: int) -> None:
    """SIGKILL the process group that ``leader`` leads; nothing happens when it has no process left."""
    with contextlib.suppress(ProcessLookupError):  # all ended meanwhile (a job's exit message is on the way)
        os.killpg(leader, signal.SIGKILL)


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _run_child(worker: str, request: dict[str, Any]) -> None:
    """In the forked child: input from /dev/null, output to the log, run the job, never return."""
    status = 1
    try:
        os.setpgid(0, 0)  # a group of its own: see kill_group (the zygote sets it too, whichever runs first)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for source, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(source, target)  # also closes the protocol pipes in the child
        os.close(null)
        os.close(log)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        status = int(sys.modules[worker].main([request["job_file"]]) or 0)
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001  (the job's log says what went wrong; the status says that it did)
        traceback.print_exc()
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Zygote side: import the worker, then fork one child per request line until stdin closes."""
    worker = (sys.argv[1:] if argv is None else argv)[0]
    importlib.import_module(worker)
    _send({"ready": True})
    requests = os.fdopen(0, "rb", buffering=0)
    while line := requests.readline():
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(worker, request)
        with contextlib.suppress(OSError):  # the child may have set it already, or exited (then nothing to kill)
            os.setpgid(pid, pid)
        _send({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        _send({"exit": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime})
    return 0


if __name__ == "__main__":
    sys.exit(main())
