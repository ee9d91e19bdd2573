"""Measurements: latency and throughput (torch eager, OpenVINO), peak memory, sizes.

Latency is the median wall time of ``repeats`` forward passes after ``warmup`` untimed passes,
of the whole exported pipeline (anomalib's pre-processor, model and post-processor) on a batch
of random images in [0, 1] at the model's input size. Throughput is ``batch / median latency``.

OpenVINO is measured in a child process per precision (``python -m benchmarks.measure``) with a
time limit: a compiled model that hangs (seen with the bf16 default on one model) is recorded as a
timeout of that precision instead of stopping the job.

Peak memory is the process's resident set size (RSS) sampled every 5 ms by a thread while a
phase runs (training; batch-8 inference), minus the RSS just before the phase: the extra memory
the phase needed. It is read from ``/proc/self/statm`` (Linux); elsewhere the increase of
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is used, which is a lower bound.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024 * 1024


def current_rss() -> int | None:
    """Resident set size of this process in bytes, or ``None`` where ``/proc`` is missing."""
    try:
        with Path("/proc/self/statm").open() as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return None


def max_rss() -> int:
    """High-water mark of the resident set size of this process in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Context manager measuring the peak extra RSS of the block, in bytes (``.peak``).

    Example:
        >>> with PeakMemory() as memory:
        ...     data = bytearray(50 * 1024 * 1024)
        >>> memory.peak > 0
        True
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.method = "rss-sampled" if current_rss() is not None else "ru_maxrss-delta"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self._highest = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = current_rss() or 0
            self._highest = max(self._highest, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.method == "rss-sampled":
            self._start = current_rss() or 0
            self._highest = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._start = max_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._highest = max(self._highest, current_rss() or 0)
        else:
            self._highest = max_rss()
        self.peak = max(0, self._highest - self._start)


def time_calls(run: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Wall times in seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def latency_stats(times: list[float], batch_size: int) -> dict[str, float]:
    """Median latency in milliseconds and throughput in images per second."""
    median = statistics.median(times)
    return {"latency_ms": median * 1000.0, "throughput_ips": batch_size / median if median > 0 else float("nan")}


def torch_latency(
    model: nn.Module, image_size: tuple[int, int], batch_size: int, warmup: int, repeats: int
) -> dict[str, float]:
    """Latency and throughput of ``model`` (eval mode, ``torch.inference_mode``) on CPU."""
    model = model.eval().cpu()
    images = torch.rand(batch_size, 3, *image_size, generator=torch.Generator().manual_seed(0))

    def run() -> Any:
        with torch.inference_mode():
            return model(images)

    with PeakMemory() as memory:
        stats = latency_stats(time_calls(run, warmup, repeats), batch_size)
    stats["peak_mem_mb"] = memory.peak / MIB
    return stats


def openvino_compile(xml_path: str | Path, precision: str, threads: int) -> Any:
    """Compile an OpenVINO IR for the CPU; ``precision`` is ``"f32"``, ``"bf16"``, ``"f16"`` or ``"default"``."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(xml_path), "CPU", config)


def openvino_precision(compiled: Any) -> str:
    """The inference precision a compiled model actually runs with (e.g. ``bf16``)."""
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint).lower()
    except Exception:  # noqa: BLE001  (property missing on some devices)
        return "unknown"


def openvino_latency(compiled: Any, image_size: tuple[int, int], batch_size: int, warmup: int, repeats: int) -> dict:
    """Latency and throughput of a compiled OpenVINO model on a random batch."""
    images = torch.rand(batch_size, 3, *image_size, generator=torch.Generator().manual_seed(0)).numpy()
    request = compiled.create_infer_request()

    def run() -> Any:
        return request.infer({0: images})

    with PeakMemory() as memory:
        stats = latency_stats(time_calls(run, warmup, repeats), batch_size)
    stats["peak_mem_mb"] = memory.peak / MIB
    return stats


def buffer_bytes(module: nn.Module) -> int:
    """Bytes of all buffers of ``module``: memory banks, Gaussian statistics, BatchNorm statistics."""
    return sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of all parameters of ``module``."""
    return sum(parameter.numel() * parameter.element_size() for parameter in module.parameters())


def file_mb(path: str | Path | None) -> float | None:
    """Size of a file in MiB, ``None`` when it does not exist."""
    if path is None or not Path(path).is_file():
        return None
    return Path(path).stat().st_size / MIB


def openvino_measure(
    xml: str | Path,
    precision: str,
    threads: int,
    image_size: tuple[int, int],
    batch_sizes: list[int],
    warmup: int,
    repeats: int,
    probe_file: str | Path | None = None,
    accuracy_file: str | Path | None = None,
) -> dict[str, Any]:
    """Compile ``xml`` at ``precision``, check the image score against torch's, time every batch size.

    Returns ``runs_as`` (the precision used), ``max_score_diff`` (largest image-score difference with
    the torch scores stored in ``probe_file``), ``b<N>_latency_ms``, ``b<N>_throughput_ips``,
    ``b<N>_peak_mem_mb`` per batch size and, with an ``accuracy_file`` (test images' paths and labels),
    ``image_AUROC`` of the compiled model on those images (:func:`openvino_image_auroc`).
    """
    import numpy as np

    compiled = openvino_compile(xml, precision, threads)
    result: dict[str, Any] = {"runs_as": openvino_precision(compiled)}
    if probe_file is not None:
        with np.load(probe_file) as probe:
            score = _score_output(compiled.create_infer_request().infer({0: probe["images"]}))
            if score is not None:
                result["max_score_diff"] = float(np.abs(np.asarray(score).reshape(-1) - probe["scores"]).max())
    for batch in batch_sizes:
        stats = openvino_latency(compiled, image_size, batch, warmup, repeats)
        result.update({f"b{batch}_{key}": value for key, value in stats.items()})
    if accuracy_file is not None:
        result["image_AUROC"] = openvino_image_auroc(compiled, accuracy_file, image_size)
    return result


def _score_output(outputs: Any) -> Any:
    return next((value for key, value in outputs.items() if "pred_score" in key.get_names()), None)


def openvino_image_auroc(
    compiled: Any, accuracy_file: str | Path, image_size: tuple[int, int], batch_size: int = 8
) -> float | None:
    """Image AUROC of a compiled model on the images listed in ``accuracy_file`` (``{"paths", "labels"}``).

    Images are read as anomalib reads them and resized to ``image_size`` (bilinear, antialiased); the
    metric is the package evaluator's ``image_AUROC``. ``None`` when the model has no ``pred_score``.
    """
    import numpy as np
    from anomalib.data import ImageBatch
    from anomalib.data.utils import read_image

    from anomalib_ext.models.defaults import default_evaluator

    probe = json.loads(Path(accuracy_file).read_text())
    metric = next(m for m in default_evaluator().test_metrics if m.name == "image_AUROC")
    request = compiled.create_infer_request()
    paths, labels = probe["paths"], probe["labels"]
    for start in range(0, len(paths), batch_size):
        images = torch.stack([read_image(path, as_tensor=True) for path in paths[start : start + batch_size]])
        images = torch.nn.functional.interpolate(images, size=image_size, mode="bilinear", antialias=True)
        score = _score_output(request.infer({0: images.numpy()}))
        if score is None:
            return None
        metric.update(
            ImageBatch(
                image=images,
                pred_score=torch.from_numpy(np.asarray(score, dtype=np.float32).reshape(-1)),
                gt_label=torch.as_tensor(labels[start : start + batch_size]),
            )
        )
    return float(metric.compute())


def openvino_in_subprocess(xml: str | Path, precision: str, timeout_s: float = 300, **kwargs: Any) -> dict[str, Any]:
    """:func:`openvino_measure` in a child process; ``{"error": ...}`` on a timeout or a failure."""
    request = json.dumps({"xml": str(xml), "precision": precision, **kwargs}, default=str)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.measure"],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"error": tail[0][:300]}
    return json.loads(lines[-1])


def _main() -> int:
    """Child process of :func:`openvino_in_subprocess`: JSON request on stdin, JSON result on stdout."""
    request = json.loads(sys.stdin.read())
    request["image_size"] = tuple(request["image_size"])
    result = openvino_measure(**request)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
