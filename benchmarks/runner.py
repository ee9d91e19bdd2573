"""The benchmark loop: jobs in order, each in its own process, resumable, crash-tolerant.

Layout of a run folder (``benchmarks/runs/<name>`` by default)::

    run.json                 seeds, versions, hardware, command, profile, timings
    records/<key>.json       one result record per job (reused on the next run)
    jobs/<key>.json          the job given to the worker
    errors/<key>.txt         traceback of a failed job (``<key>.export.txt`` for export failures)
    logs/<key>.log           the worker's output (Lightning's log); ``zygote.log``: the workers' import
    artifacts/<key>/         checkpoint, OpenVINO IR, heat maps
    results.csv, results.md, *.png   the report (:mod:`benchmarks.report`)

``key`` is ``<profile>__<dataset>__<category>__<model>__s<seed>`` (``__n<steps>`` added for a point of
a learning curve of separate runs, ``curve_runs``). A stored record is reused when its
settings hash matches the job's (change the epochs, the input size, ... and the job runs again);
the settings include a fingerprint of the model's code and config (``code_fingerprint``), so a
model edited after its job ran is run again while the others are reused;
a failed record is reused too unless ``retry_failed`` is set, so a model that crashes is not
re-run every time. A worker that dies without writing its record (segfault, out of memory,
timeout) is recorded with the exit status and the tail of its log.

The records of a published run are small (about 1.3 KB a job) and are committed with the page
(:func:`save_records`, ``--publish``), so a fresh checkout can resume that run:
:func:`seed_records` (``--reuse-records``) copies them into a run folder that lacks them, and only the
jobs whose settings (model code included) have changed since run again. Their heat-map arrays are not
committed (about 2 MB a job): a heat-map grid then shows the models that ran in this folder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from benchmarks.profiles import (
    PROJECT_ROOT,
    Profile,
    code_fingerprint,
    data_fingerprint,
    profile_dict,
    resolve_data,
    resolve_model,
    settings_hash,
)
from benchmarks.zygote import ForkedJob, Zygote, kill_group, worker_env

IDENTITY = ("model", "dataset", "category", "profile", "seed")


@dataclass
class Job:
    """One model on one dataset category under a profile, with one seed."""

    model: str
    dataset: str
    category: str
    profile: str
    seed: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the job cannot even be built (unknown model, missing config)
    #: The optimiser steps of this point of a learning curve of separate runs (``make_jobs(curve_runs=...)``).
    curve_run_steps: int | None = None

    @property
    def key(self) -> str:
        """File-name-safe identity: ``<profile>__<dataset>__<category>__<model>__s<seed>[__n<steps>]``."""
        parts = (self.profile, self.dataset, self.category, self.model, f"s{self.seed}")
        parts += (f"n{self.curve_run_steps}",) if self.curve_run_steps is not None else ()
        return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", part) for part in parts)

    @property
    def settings(self) -> str:
        """Hash of what determines the job's numbers (model, data, profile settings, seed)."""
        keep = {k: v for k, v in self.spec.items() if k not in {"record", "traceback", "export_traceback"}}
        keep.pop("artifacts_dir", None)
        keep.pop("progress_file", None)
        keep.pop("progress_bar", None)
        return settings_hash(keep)


def _per_model(value: int | dict[str, int] | None, name: str) -> int | None:
    return value.get(name.lower()) if isinstance(value, dict) else value


def make_jobs(
    models: list[str],
    datasets: list[str],
    categories: dict[str, list[str]],
    profile: Profile,
    *,
    seeds: list[int] | tuple[int, ...] | dict[str, list[int]] = (0,),
    threads: int = 2,
    epochs: int | dict[str, int] | None = None,
    steps: int | dict[str, int] | None = None,
    curve_steps: list[int] | None = None,
    curve_runs: list[int] | None = None,
    openvino: bool = True,
    int8: bool = False,
    data_args: dict[str, Any] | None = None,
    model_args: dict[str, dict[str, Any]] | None = None,
    int8_types: dict[str, list[str] | None] | None = None,
) -> list[Job]:
    """All jobs, dataset-major, then category, then model, then seed (the order of the tables).

    ``seeds`` applies to every dataset, or per dataset (``{"DemoTextures": [0, 1, 2], "ELPV": [0]}``).
    ``epochs``/``steps`` override the schedule of every model (an int) or of some (``{"n2n": 6}``,
    lower-case names; see :func:`benchmarks.profiles.schedule`). ``curve_steps`` switches to the
    learning-curve mode: every job trains ``max(curve_steps)`` optimiser steps (``max_epochs=-1``) and
    is evaluated at each listed step. ``curve_runs`` makes a learning curve of separate runs, for a model
    whose schedule depends on its length (RB-AE splits its steps into two phases): one job per listed
    step count, each exactly the job of ``steps=<count>``; a model with its own entry in ``epochs`` or
    ``steps``, or whose ``trainer_arguments`` fix its epochs (PaDiM), gets one job, a reference for the
    curve. ``model_args`` changes init arguments per model (lower-case
    names; dotted keys, see :func:`benchmarks.profiles.resolve_model`). ``int8_types`` replaces the
    ``int8_quantised_types`` of the models it names (lower-case; ``None``: every type) for the INT8 export.

    Raises:
        ValueError: Both ``curve_steps`` and ``curve_runs`` are given.
    """
    if curve_steps and curve_runs:
        msg = "A learning curve is either evaluated during one run (curve_steps) or made of runs (curve_runs)."
        raise ValueError(msg)
    jobs = []
    for dataset in datasets:
        for category in categories[dataset]:
            for name in models:
                changes = (model_args or {}).get(name.lower())
                make = functools.partial(
                    _make_job, name, dataset, category, profile, data_args=data_args, model_args=changes
                )
                for base in _schedule_jobs(make, name, epochs, steps, curve_steps, curve_runs):
                    if base.spec:
                        base.spec.update({"threads": threads, "openvino": openvino, "int8": int8 and openvino})
                        if base.spec["int8"] and int8_types and name.lower() in int8_types:
                            base.spec["int8_types"] = int8_types[name.lower()]
                    for seed in seeds.get(dataset, [0]) if isinstance(seeds, dict) else seeds:
                        spec = {**base.spec, "seed": seed} if base.spec else {}
                        jobs.append(dataclasses.replace(base, seed=seed, spec=spec))
    return jobs


def _schedule_jobs(
    make: Callable[[int | dict[str, int] | None, int | dict[str, int] | None, list[int] | None], Job],
    name: str,
    epochs: int | dict[str, int] | None,
    steps: int | dict[str, int] | None,
    curve_steps: list[int] | None,
    curve_runs: list[int] | None,
) -> list[Job]:
    """The jobs of model ``name`` on a category, without seed: one, or one per count of ``curve_runs``.

    ``make(epochs, steps, curve_steps)`` builds a job of the model on the category (:func:`_make_job`).
    """
    own_schedule = _per_model(epochs, name) is not None or _per_model(steps, name) is not None
    if not curve_runs or own_schedule:
        return [make(epochs, steps, curve_steps)]
    counts = sorted(set(curve_runs))
    first = make(None, counts[0], None)
    if first.error or first.spec["max_steps"] is None:  # trainer_arguments fix the epochs (PaDiM): a reference
        return [first]
    jobs = [first, *(make(None, count, None) for count in counts[1:])]
    return [dataclasses.replace(job, curve_run_steps=count) for job, count in zip(jobs, counts, strict=True)]


def _make_job(
    name: str,
    dataset: str,
    category: str,
    profile: Profile,
    epochs: int | dict[str, int] | None,
    steps: int | dict[str, int] | None,
    curve_steps: list[int] | None,
    data_args: dict[str, Any] | None,
    model_args: dict[str, Any] | None = None,
) -> Job:
    """The job of a model on a category, without seed (its ``error`` set when it cannot be resolved)."""
    job = Job(model=name, dataset=dataset.rpartition(".")[2], category=category, profile=profile.name)
    try:
        model = resolve_model(name, profile, _per_model(epochs, name), _per_model(steps, name), model_args)
        data = resolve_data(dataset, category, profile, {**model.data_args, **(data_args or {})})
    except Exception as error:  # noqa: BLE001  (recorded as the job's error)
        job.error = f"{type(error).__name__}: {error}"
        return job
    job.model = model.name
    max_epochs, max_steps = model.max_epochs, model.max_steps
    if curve_steps:
        max_epochs, max_steps = -1, max(curve_steps)
    job.spec = {
        "model": asdict(model),
        "code": code_fingerprint(model.class_path, model.config),
        "data": asdict(data),
        "data_code": data_fingerprint(data.class_path),
        "image_size": profile.image_size,
        "offline_backbones": profile.offline_backbones,
        "max_epochs": max_epochs,
        "max_steps": max_steps,
        "curve_steps": sorted(set(curve_steps)) if curve_steps else None,
        "max_train_images": profile.max_train_images,
        "coreset_max_patches": profile.coreset_max_patches,
        "batch_sizes": list(profile.latency_batch_sizes),
        "warmup": profile.warmup,
        "repeats": profile.repeats,
        "heatmap_images": profile.heatmap_images,
        "openvino_precisions": list(profile.openvino_precisions),
    }
    return job


def load_record(path: Path) -> dict[str, Any] | None:
    """A stored record, or ``None`` when missing or unreadable (a half-written file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_records(jobs: list[Job], output: Path, folder: Path) -> list[Path]:
    """Copy the stored records of ``jobs`` and ``run.json`` from the run folder ``output`` into ``folder``.

    ``folder``'s old records are removed first, so it holds exactly the published run. Jobs without a
    stored record are left out.
    """
    records = Path(folder) / "records"
    records.mkdir(parents=True, exist_ok=True)
    for old in records.glob("*.json"):
        old.unlink()
    saved = []
    for job in jobs:
        source = Path(output) / "records" / f"{job.key}.json"
        if load_record(source) is not None:
            saved.append(Path(shutil.copy2(source, records / source.name)))
    if (Path(output) / "run.json").is_file():
        shutil.copy2(Path(output) / "run.json", Path(folder) / "run.json")
    return saved


def seed_records(jobs: list[Job], output: Path, folder: Path) -> int:
    """Copy ``folder``'s record of each job into the run folder ``output`` where it has none; return how many.

    A copied record is then reused like one the run wrote itself: only when the job's settings hash
    (model code and config included) still matches it.
    """
    source = Path(folder) / "records"
    if not source.is_dir():
        msg = f"--reuse-records {folder}: no records/ folder there (expected the folder --publish-records wrote)."
        raise FileNotFoundError(msg)
    target = Path(output) / "records"
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    for job in jobs:
        record, destination = source / f"{job.key}.json", target / f"{job.key}.json"
        if not destination.exists() and load_record(record) is not None:
            shutil.copy2(record, destination)
            copied += 1
    return copied


def should_reuse(record: dict[str, Any] | None, settings: str, retry_failed: bool) -> bool:
    """Whether a stored record answers the job: same settings, and not a failure to retry."""
    if record is None or record.get("settings_hash") != settings:
        return False
    return not (record.get("error") and retry_failed)


def failure_record(job: Job, message: str, traceback_text: str, errors_dir: Path) -> dict[str, Any]:
    """Record of a job that failed, with its traceback written to ``errors/<key>.txt``."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    path = errors_dir / f"{job.key}.txt"
    path.write_text(traceback_text)
    return {"error": message, "traceback_file": str(path)}


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Runner:
    """Runs jobs into ``output``, reusing stored records.

    Args:
        output: Run folder.
        timeout_s: Wall-clock limit of one job; a job past it is killed and recorded.
        retry_failed: Run again the jobs whose stored record is a failure.
        force: Ignore every stored record.
        progress: Callback ``(event, job, info)`` for progress display (``"start"``, ``"poll"``, ``"done"``).
        worker: Module run for each job: its ``main([job_file])`` returns the exit status.
        start_method: ``"zygote"`` or ``"spawn"`` (below); ``None``: ``"zygote"`` where ``os.fork`` exists.
        openvino_timeout_s: Wall-clock limit of the OpenVINO measurement of one precision.

    Each job runs in a process of its own. Where the OS can fork (Linux, macOS), a
    :class:`~benchmarks.zygote.Zygote` imports ``worker`` once per run and forks a clean child per job,
    instead of a fresh ``python -m <worker>`` paying the import of torch, Lightning and anomalib each time
    (7 to 9 s a job on a 2-core CPU); elsewhere, or with ``start_method="spawn"``, each job starts a
    fresh interpreter.
    """

    def __init__(
        self,
        output: Path,
        timeout_s: float = 1800,
        retry_failed: bool = False,
        force: bool = False,
        progress: Callable[[str, Job, dict[str, Any]], None] | None = None,
        worker: str = "benchmarks.worker",
        openvino_timeout_s: float = 300,
        start_method: Literal["zygote", "spawn"] | None = None,
    ) -> None:
        self.output = Path(output)
        self.timeout_s = timeout_s
        self.retry_failed = retry_failed
        self.force = force
        self.progress = progress or (lambda *_: None)
        self.worker = worker
        self.start_method = start_method or ("zygote" if hasattr(os, "fork") else "spawn")
        self._zygote: Zygote | None = None
        self.openvino_timeout_s = openvino_timeout_s
        for sub in ("records", "jobs", "errors", "logs", "artifacts"):
            (self.output / sub).mkdir(parents=True, exist_ok=True)

    def record_path(self, job: Job) -> Path:
        """Where the record of ``job`` is stored."""
        return self.output / "records" / f"{job.key}.json"

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Run (or reuse) every job; return the records in job order."""
        try:
            return self._run(jobs)
        finally:
            self.close()

    def close(self) -> None:
        """End the run's zygote, if one was started (:meth:`run` does this itself)."""
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def _run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        records = []
        for index, job in enumerate(jobs):
            info = {"index": index, "total": len(jobs)}
            stored = None if self.force else load_record(self.record_path(job))
            if job.error is None and should_reuse(stored, job.settings, self.retry_failed):
                self.progress("reused", job, {**info, "record": stored})
                records.append(stored)
                continue
            self.progress("start", job, info)
            record = self.run_one(job, info)
            self.progress("done", job, {**info, "record": record})
            records.append(record)
        return records

    def run_one(self, job: Job, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one job in a worker process and store its record."""
        identity = {
            "model": job.model,
            "dataset": job.dataset,
            "category": job.category,
            "profile": job.profile,
            "seed": job.seed,
        }
        if job.curve_run_steps is not None:
            identity["curve_run_steps"] = job.curve_run_steps
        errors_dir = self.output / "errors"
        if job.error is not None:
            record = failure_record(job, job.error, job.error + "\n", errors_dir)
        else:
            record = self._run_worker(job, errors_dir, info or {})
        record = {
            **identity,
            **record,
            "settings_hash": job.settings,
            "config": job.spec.get("model", {}).get("config"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.record_path(job).write_text(json.dumps(record, indent=2, default=str))
        return record

    def _run_worker(self, job: Job, errors_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        record_file = self.output / "records" / f"{job.key}.partial.json"
        so_far_file = record_file.with_suffix(".sofar.json")
        progress_file = self.output / "logs" / f"{job.key}.progress.json"
        log_file = self.output / "logs" / f"{job.key}.log"
        for stale in (record_file, so_far_file, progress_file):
            stale.unlink(missing_ok=True)
        spec = {
            **job.spec,
            "record": str(record_file),
            "traceback": str(errors_dir / f"{job.key}.txt"),
            "export_traceback": str(errors_dir / f"{job.key}.export.txt"),
            "artifacts_dir": str(self.output / "artifacts" / job.key),
            "progress_file": str(progress_file),
            "progress_bar": False,
            "openvino_timeout_s": self.openvino_timeout_s,
        }
        job_file = self.output / "jobs" / f"{job.key}.json"
        job_file.write_text(json.dumps(spec, indent=2, default=str))
        if self.start_method == "zygote" and self._zygote is None:
            # imports the worker before the job's clock starts
            self._zygote = Zygote(self.worker, self.output / "logs" / "zygote.log")
        start = time.monotonic()
        counters = machine_counters()
        if self._zygote is not None:
            process: ForkedJob | _SpawnedJob = self._zygote.start(job_file, log_file)
        else:
            process = _SpawnedJob(self.worker, job_file, log_file)
        timed_out = False
        try:
            while process.wait(0.5) is None:
                if time.monotonic() - start > self.timeout_s:
                    process.kill()
                    timed_out = True
                    break
                elapsed = time.monotonic() - start
                self.progress("poll", job, {**info, "elapsed": elapsed, **_read_progress(progress_file)})
        except BaseException:  # Ctrl-C reaches the runner only: the job's own process group would go on
            kill_group(process.pid)
            raise
        after = machine_counters()
        if after is not None:
            after["ours"] += process.cpu_s  # a forked job is the zygote's child, not the runner's
        machine = machine_share(counters, after)
        record = load_record(record_file)
        so_far = load_record(so_far_file) or {}
        record_file.unlink(missing_ok=True)
        so_far_file.unlink(missing_ok=True)
        if record is not None and not timed_out:
            if record.get("error"):
                record["traceback_file"] = str(errors_dir / f"{job.key}.txt")
            if record.get("export_error"):
                record["export_traceback_file"] = str(errors_dir / f"{job.key}.export.txt")
            return {**record, **machine}
        reason = (
            f"timeout after {self.timeout_s:.0f} s"
            if timed_out
            else f"worker died with exit status {_exit_status(process.wait(None))} before writing its record"
        )
        failed = failure_record(
            job, reason, f"{reason}\n--- last lines of {log_file} ---\n{_tail(log_file)}\n", errors_dir
        )
        # keep what the worker had measured before it died (accuracy, torch latency, ...)
        return {**so_far, **failed, "wall_time_s": time.monotonic() - start, **machine}


class _SpawnedJob:
    """A job in a fresh interpreter, ``python -m <worker> <job_file>`` (the runner's own child)."""

    cpu_s = 0.0  # reaped by the runner: already in its children's CPU time

    def __init__(self, worker: str, job_file: Path, log_file: Path) -> None:
        with log_file.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", worker, str(job_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=worker_env(),
                start_new_session=True,  # leads a process group of its own, killed as one (zygote.kill_group)
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_group(self.process.pid)
        self.process.wait()


def _exit_status(exitcode: int | None) -> str:
    """``139``, or ``-9 (SIGKILL)`` for a child ended by a signal."""
    if exitcode is None or exitcode >= 0:
        return str(exitcode)
    try:
        return f"{exitcode} ({signal.Signals(-exitcode).name})"
    except ValueError:
        return str(exitcode)


def _proc_stat_seconds(text: str) -> tuple[float, float] | None:
    """Busy and steal seconds of all CPUs together from the text of ``/proc/stat`` (``None``: not Linux's)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu" and len(fields) >= 9:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
            tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            return (user + nice + system + irq + softirq) / tick, steal / tick
    return None


def machine_counters() -> dict[str, float] | None:
    """CPU time used so far by the machine, by this process and by its finished children, and steal time.

    ``None`` where ``/proc/stat`` cannot be read (not Linux): the records then leave the share out.
    """
    try:
        machine = _proc_stat_seconds(Path("/proc/stat").read_text())
    except OSError:
        return None
    if machine is None:
        return None
    times = os.times()
    return {
        "busy": machine[0],
        "steal": machine[1],
        "ours": times.user + times.system + times.children_user + times.children_system,
    }


def machine_share(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """What else the machine did while a job ran: ``others_cpu_s`` and ``steal_s`` (empty if unknown).

    ``others_cpu_s`` is the machine's busy CPU time minus the runner's and its worker's (so other processes:
    a test run, a second benchmark; a few seconds of system daemons are normal), ``steal_s`` the time the
    hypervisor gave the virtual CPUs to other guests. Both make a wall-clock time comparable, or not.
    """
    if before is None or after is None:
        return {}
    others = (after["busy"] - before["busy"]) - (after["ours"] - before["ours"])
    return {"others_cpu_s": round(max(others, 0.0), 1), "steal_s": round(after["steal"] - before["steal"], 1)}


def _read_progress(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: CPU features that change what a latency or an INT8 model means: AVX-512, VNNI (u8 x s8 dot products,
#: without which OpenVINO's INT8 kernels saturate 8-bit weights), bf16 and AMX
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpu_flags(cpuinfo: str) -> list[str]:
    """Those of :data:`CPU_FLAGS` that the ``flags`` line of ``/proc/cpuinfo``'s text lists."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in CPU_FLAGS if flag in present]
    return []


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions and hardware, for ``run.json``."""
    dists = (
        "torch",
        "torchvision",
        "anomalib",
        "openvino",
        "timm",
        "lightning",
        "torchmetrics",
        "numpy",
        "anomalib-ext",
    )
    cpuinfo = _read_text("/proc/cpuinfo")
    return {
        "versions": {"python": platform.python_version(), **{dist: _version(dist) for dist in dists}},
        "hardware": {
            "cpu": _cpu_model(cpuinfo),
            "cpu_flags": _cpu_flags(cpuinfo),
            "logical_cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "ram_gib": _ram_gib(),
            "platform": platform.platform(),
        },
        "git_commit": _git_commit(),
    }


def write_run_info(
    output: Path,
    profile: Profile,
    seeds: list[int] | dict[str, list[int]],
    threads: int,
    argv: list[str],
    **extra: Any,
) -> Path:
    """Write ``run.json``: command, profile, seeds, threads, versions, hardware and ``extra``."""
    path = Path(output) / "run.json"
    previous = load_record(path) or {}
    info = {
        "command": "python -m benchmarks " + " ".join(argv),
        "profile": profile_dict(profile),
        "seeds": seeds if isinstance(seeds, dict) else list(seeds),
        "torch_threads": threads,
        **environment(),
        **extra,
    }
    if "started_at" in previous and "started_at" not in extra:
        info["first_started_at"] = previous.get("first_started_at", previous["started_at"])
    path.write_text(json.dumps(info, indent=2, default=str))
    return path
