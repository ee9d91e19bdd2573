"""Resume logic and crash recording of the benchmark runner, with a fake worker (no training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.runner import (
    Job,
    Runner,
    _cpu_flags,
    _proc_stat_seconds,
    load_record,
    machine_counters,
    machine_share,
    save_records,
    seed_records,
    should_reuse,
)
from benchmarks.zygote import ZygoteError

FAKE_WORKER = """
import json, os, subprocess, sys, time

with open(os.path.join(os.path.dirname(__file__), "imports.txt"), "a") as handle:
    handle.write(f"{os.getpid()}\\n")


def main(argv):
    job = json.load(open(argv[-1]))
    name = job["model"]["name"]
    print(f"hello from {name}")
    calls = os.path.join(os.path.dirname(job["record"]), "..", "calls.txt")
    with open(calls, "a") as handle:
        handle.write(name + "\\n")
    with open(calls.replace("calls.txt", "pids.txt"), "a") as handle:
        handle.write(f"{os.getpid()} {os.getppid()}\\n")
    if name == "Segfault":
        os._exit(139)
    if name == "Busy":  # another process, not the worker's waited-for child, burns 1 CPU-s during the job
        done = job["record"] + ".burnt"
        burn = "import time\\nwhile time.process_time() < 1.0: pass\\nopen(%r, 'w').close()" % done
        subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
        while not os.path.exists(done):
            time.sleep(0.05)
        time.sleep(0.2)
    if name == "Burn":  # the worker itself uses 1 CPU-s
        while time.process_time() < 1.0:
            pass
    if name == "Torch":  # parallel CPU kernels (OpenMP) in the worker
        import torch

        torch.nn.functional.conv2d(torch.rand(4, 3, 128, 128), torch.rand(16, 3, 3, 3)).sum()
        (torch.rand(300, 300) @ torch.rand(300, 300)).sum()
    if name == "HangWithChild":  # like the OpenVINO measurement: a subprocess of the job, then a hang
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(job["record"] + ".child", "w").write(str(child.pid))
        time.sleep(60)
    if name == "Hang":
        so_far = job["record"].replace(".json", ".sofar.json")
        json.dump({"error": None, "image_AUROC": 0.7}, open(so_far, "w"))
        time.sleep(60)
    record = {"error": None, "image_AUROC": 0.9, "wall_time_s": 0.1}
    if name == "Fails":
        record["error"] = "RuntimeError: boom"
        open(job["traceback"], "w").write("Traceback: boom\\n")
    json.dump(record, open(job["record"], "w"))
    return 1 if record["error"] else 0


if __name__ == "__main__":  # start_method="spawn": python -m fake_benchmark_worker <job>
    sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def fake_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module standing in for :mod:`benchmarks.worker` (its ``main`` writes a record without training)."""
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "fake_benchmark_worker.py").write_text(FAKE_WORKER)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "fake_benchmark_worker", raising=False)  # imported afresh by each test
    return "fake_benchmark_worker"


def make_job(model: str, epochs: int = 1, seed: int = 0) -> Job:
    return Job(
        model=model,
        dataset="Toy",
        category="a",
        profile="cpu",
        seed=seed,
        spec={"model": {"name": model, "config": None}, "max_epochs": epochs, "seed": seed},
    )


def calls(output: Path) -> list[str]:
    path = output / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_should_reuse_needs_same_settings_and_respects_retry_failed():
    ok = {"settings_hash": "abc", "error": None}
    failed = {"settings_hash": "abc", "error": "boom"}
    assert should_reuse(ok, "abc", retry_failed=False)
    assert should_reuse(ok, "abc", retry_failed=True)
    assert not should_reuse(ok, "other", retry_failed=False)
    assert should_reuse(failed, "abc", retry_failed=False)
    assert not should_reuse(failed, "abc", retry_failed=True)
    assert not should_reuse(None, "abc", retry_failed=False)


def test_job_key_is_file_name_safe_and_settings_ignore_paths():
    job = make_job("a/b c")
    assert "/" not in job.key
    assert " " not in job.key
    before = job.settings
    job.spec["artifacts_dir"] = "/somewhere"
    assert job.settings == before
    job.spec["max_epochs"] = 5
    assert job.settings != before


def test_stored_records_are_reused_on_a_repeated_run(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    jobs = [make_job("A"), make_job("B")]
    first = Runner(output, worker=fake_worker).run(jobs)
    assert [r["model"] for r in first] == ["A", "B"]
    assert calls(output) == ["A", "B"]
    second = Runner(output, worker=fake_worker).run([make_job("A"), make_job("B")])
    assert calls(output) == ["A", "B"]  # nothing ran again
    assert [r["image_AUROC"] for r in second] == [0.9, 0.9]


def test_changed_settings_or_force_run_the_job_again(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    Runner(output, worker=fake_worker).run([make_job("A")])
    Runner(output, worker=fake_worker).run([make_job("A", epochs=2)])
    assert calls(output) == ["A", "A"]
    Runner(output, worker=fake_worker, force=True).run([make_job("A", epochs=2)])
    assert calls(output) == ["A", "A", "A"]


def test_a_crashing_job_is_recorded_and_the_run_goes_on(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    records = Runner(output, worker=fake_worker).run([make_job("Segfault"), make_job("Fails"), make_job("A")])
    died, failed, ok = records
    assert "exit status 139 before writing its record" in died["error"]
    assert Path(died["traceback_file"]).is_file()
    assert failed["error"] == "RuntimeError: boom"
    assert Path(failed["traceback_file"]).read_text() == "Traceback: boom\n"
    assert ok["error"] is None
    assert load_record(output / "records" / f"{make_job('Segfault').key}.json")["error"] == died["error"]


def test_failed_jobs_are_reused_unless_retry_failed(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    Runner(output, worker=fake_worker).run([make_job("Fails")])
    Runner(output, worker=fake_worker).run([make_job("Fails")])
    assert calls(output) == ["Fails"]
    Runner(output, worker=fake_worker, retry_failed=True).run([make_job("Fails")])
    assert calls(output) == ["Fails", "Fails"]


def test_a_hung_job_is_killed_at_the_timeout(tmp_path: Path, fake_worker: str):
    record = Runner(tmp_path / "run", worker=fake_worker, timeout_s=3).run([make_job("Hang")])[0]
    assert record["error"].startswith("timeout after 3 s")
    assert "hello from Hang" in Path(record["traceback_file"]).read_text()  # the tail of the worker's log
    assert record["image_AUROC"] == 0.7  # what was measured before the kill is kept


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("start_method", ["zygote", "spawn"])
def test_a_timeout_also_kills_the_processes_the_job_started(tmp_path: Path, fake_worker: str, start_method: str):
    output = tmp_path / "run"
    record = Runner(output, worker=fake_worker, timeout_s=3, start_method=start_method).run([make_job("HangWithChild")])
    assert record[0]["error"].startswith("timeout after 3 s")
    child = int(next(output.rglob("*.child")).read_text())
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child), "the job's subprocess outlived the job"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_an_interrupted_run_kills_its_running_job(tmp_path: Path, fake_worker: str):
    # Ctrl-C reaches the runner's process group only; the job leads its own and must not go on alone
    output = tmp_path / "run"

    def interrupt(event: str, job: Job, info: dict) -> None:
        if event == "poll" and list(output.rglob("*.child")):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runner(output, worker=fake_worker, timeout_s=30, progress=interrupt).run([make_job("HangWithChild")])
    pids = [int(next(output.rglob("*.child")).read_text())]
    pids += [int(line.split()[0]) for line in (output / "pids.txt").read_text().splitlines()]
    deadline = time.monotonic() + 5
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, pids)), "the interrupted job (or its subprocess) went on"


def test_each_job_is_a_child_of_one_process_that_imported_the_worker_once(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    Runner(output, worker=fake_worker).run([make_job("A"), make_job("B")])
    imports = (tmp_path / "fake" / "imports.txt").read_text().split()
    assert len(imports) == 1  # imported once, by the zygote; its children inherit it
    assert imports != [str(os.getpid())]  # ... which is not the runner (see the torch test below)
    children = [line.split() for line in (output / "pids.txt").read_text().splitlines()]
    assert [parent for _, parent in children] == imports * 2
    assert len({child for child, _ in children}) == 2  # a fresh process per job
    assert "hello from B" in (output / "logs" / f"{make_job('B').key}.log").read_text()


def test_a_worker_runs_torch_after_the_runners_own_process_has(tmp_path: Path, fake_worker: str):
    # A child forked from a process whose OpenMP pool has run hangs in its first parallel kernel:
    # the runner (here: pytest, after other tests trained models in it) must not be that process.
    torch = pytest.importorskip("torch")
    torch.nn.functional.conv2d(torch.rand(4, 3, 128, 128), torch.rand(16, 3, 3, 3)).sum()
    record = Runner(tmp_path / "run", worker=fake_worker, timeout_s=30).run([make_job("Torch")])[0]
    assert record["error"] is None


def test_spawned_workers_are_fresh_interpreters(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    records = Runner(output, worker=fake_worker, start_method="spawn").run([make_job("A"), make_job("Fails")])
    assert [record["error"] for record in records] == [None, "RuntimeError: boom"]
    imports = (tmp_path / "fake" / "imports.txt").read_text().split()
    children = [line.split()[0] for line in (output / "pids.txt").read_text().splitlines()]
    assert children == imports  # each job imported the worker itself
    assert "hello from A" in (output / "logs" / f"{make_job('A').key}.log").read_text()


def test_a_worker_module_that_cannot_be_imported_is_named(tmp_path: Path):
    with pytest.raises(ZygoteError, match="'no_such_worker_module' could not be loaded") as raised:
        Runner(tmp_path / "run", worker="no_such_worker_module").run([make_job("A")])
    assert "No module named 'no_such_worker_module'" in str(raised.value)  # the import's own error, from the log


def test_a_job_that_cannot_be_built_is_recorded_without_a_worker(tmp_path: Path, fake_worker: str):
    job = make_job("Unknown")
    job.error = "ValueError: Unknown model 'Unknown'"
    record = Runner(tmp_path / "run", worker=fake_worker).run([job])[0]
    assert record["error"] == job.error
    assert calls(tmp_path / "run") == []
    assert json.loads((tmp_path / "run" / "records" / f"{job.key}.json").read_text())["model"] == "Unknown"


def test_each_seed_is_a_job_of_its_own_and_resumes_on_its_own(tmp_path: Path, fake_worker: str):
    output = tmp_path / "run"
    first = Runner(output, worker=fake_worker).run([make_job("A", seed=0), make_job("A", seed=1)])
    assert [record["seed"] for record in first] == [0, 1]
    assert calls(output) == ["A", "A"]
    assert sorted(path.name for path in (output / "records").glob("*.json")) == [
        "cpu__Toy__a__A__s0.json",
        "cpu__Toy__a__A__s1.json",
    ]
    Runner(output, worker=fake_worker).run([make_job("A", seed=0), make_job("A", seed=1), make_job("A", seed=2)])
    assert calls(output) == ["A", "A", "A"]  # only the new seed ran


def test_published_records_let_a_fresh_run_folder_rerun_only_the_changed_jobs(tmp_path: Path, fake_worker: str):
    first = tmp_path / "run"
    Runner(first, worker=fake_worker).run([make_job("A"), make_job("B"), make_job("C")])
    (first / "run.json").write_text("{}")
    published = tmp_path / "published"
    (published / "records").mkdir(parents=True)
    (published / "records" / "stale.json").write_text("{}")
    saved = save_records([make_job("A"), make_job("B")], first, published)
    assert sorted(path.name for path in saved) == ["cpu__Toy__a__A__s0.json", "cpu__Toy__a__B__s0.json"]
    assert sorted(path.name for path in (published / "records").iterdir()) == [path.name for path in sorted(saved)]
    assert (published / "run.json").is_file()

    fresh = tmp_path / "fresh"  # a new checkout: B unchanged, A's settings (its code or config) changed
    jobs = [make_job("A", epochs=2), make_job("B")]
    assert seed_records(jobs, fresh, published) == 2
    records = Runner(fresh, worker=fake_worker).run(jobs)
    assert calls(fresh) == ["A"]
    assert [record["model"] for record in records] == ["A", "B"]
    assert seed_records(jobs, fresh, published) == 0  # never over a record the folder has


def test_reuse_records_names_a_folder_without_records(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"--reuse-records .*nowhere.*records/"):
        seed_records([make_job("A")], tmp_path / "run", tmp_path / "nowhere")


PROC_STAT = """cpu  1000 200 300 9000 50 10 20 400 0 0
cpu0 500 100 150 4500 25 5 10 200 0 0
intr 12345
"""


def test_proc_stat_gives_busy_and_steal_seconds_of_all_cpus():
    tick = os.sysconf("SC_CLK_TCK")
    # busy: user + nice + system + irq + softirq (idle and iowait are not; steal is its own)
    assert _proc_stat_seconds(PROC_STAT) == ((1000 + 200 + 300 + 10 + 20) / tick, 400 / tick)
    assert _proc_stat_seconds("intr 1\n") is None


def test_machine_share_subtracts_the_runner_and_its_worker():
    before = {"busy": 100.0, "steal": 5.0, "ours": 10.0}
    after = {"busy": 160.0, "steal": 7.5, "ours": 58.0}
    assert machine_share(before, after) == {"others_cpu_s": 12.0, "steal_s": 2.5}
    assert machine_share(None, after) == {}


@pytest.mark.skipif(machine_counters() is None, reason="needs Linux's /proc/stat")
def test_own_cpu_time_includes_finished_children():
    before = machine_counters()
    subprocess.run([sys.executable, "-c", "import time\nwhile time.process_time() < 0.5: pass"], check=True)
    assert machine_counters()["ours"] - before["ours"] >= 0.45


@pytest.mark.skipif(machine_counters() is None, reason="needs Linux's /proc/stat")
def test_cpu_used_by_other_processes_during_a_job_is_recorded(tmp_path: Path, fake_worker: str):
    quiet, busy = Runner(tmp_path / "run", worker=fake_worker).run([make_job("A"), make_job("Busy")])
    assert {"others_cpu_s", "steal_s"} <= quiet.keys()
    assert busy["others_cpu_s"] >= 0.9  # the 1 CPU-s of the process the worker did not wait for


def test_cpu_flags_name_the_features_that_change_latency_and_int8():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni amx_tile\n"
    assert _cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512_vnni", "amx_tile"]
    assert _cpu_flags("flags\t: fpu avx avx2\n") == ["avx2"]  # an AVX2-only CPU: no vnni
    assert _cpu_flags("") == []


def test_a_forked_workers_cpu_time_is_the_runners_not_the_others(tmp_path: Path, fake_worker: str, monkeypatch):
    # the machine is said to have been busy 5 CPU-s during the job, the runner itself not at all
    readings = iter([{"busy": 0.0, "steal": 0.0, "ours": 0.0}, {"busy": 5.0, "steal": 0.0, "ours": 0.0}])
    monkeypatch.setattr("benchmarks.runner.machine_counters", lambda: next(readings))
    record = Runner(tmp_path / "run", worker=fake_worker).run([make_job("Burn")])[0]
    assert 3.5 < record["others_cpu_s"] <= 4.0  # the worker's own ~1 CPU-s (from the zygote's wait4) is not "others"
