"""Measurements: latency and throughput (torch eager, OpenVINO), peak memory, sizes.

Latency is the median wall time of ``repeats`` forward passes after ``warmup`` untimed passes,
of the whole exported pipeline (anomalib's pre-processor, model and post-processor) on a batch
of random images in [0, 1] at the model's input size. Throughput is ``batch / median latency``.

Peak memory is the process's resident set size (RSS) sampled every 5 ms by a thread while a
phase runs (training; batch-8 inference), minus the RSS just before the phase: the extra memory
the phase needed. It is read from ``/proc/self/statm`` (Linux); elsewhere the increase of
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is used, which is a lower bound.
"""

from __future__ import annotations

import os
import resource
import statistics
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
        return str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
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
