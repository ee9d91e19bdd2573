"""One benchmark job (a model on one dataset category), run in its own process.

The runner starts ``python -m benchmarks.worker <job.json>`` for every job, so a crash, a leak or
a hung model cannot take the other jobs down and each job's peak memory is its own. The job file
holds everything needed (model, data, profile settings, output paths); the worker writes the
result record (JSON) and, on failure, the traceback next to it.

Steps, each timed or measured: build the datamodule and model, train with anomalib's Engine,
test with the package's evaluator (:func:`anomalib_ext.models.defaults.default_evaluator`), save the
checkpoint, measure torch eager latency, store heat maps of fixed test
images, export to OpenVINO and measure its latency at each precision. A failure after training
keeps the numbers measured so far (``export_error`` for the export steps).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from anomalib_ext.models.defaults import RANKING_METRICS, THRESHOLDED_METRICS, default_evaluator

logger = logging.getLogger("benchmarks.worker")

METRIC_NAMES = (*RANKING_METRICS, *THRESHOLDED_METRICS)


def _import(class_path: str) -> Any:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(value: Any) -> Any:
    """Instantiate ``{"class_path": ..., "init_args": {...}}`` values recursively (jsonargparse's form)."""
    if isinstance(value, dict) and "class_path" in value:
        cls = _import(value["class_path"])
        return cls(**{k: instantiate(v) for k, v in (value.get("init_args") or {}).items()})
    if isinstance(value, dict):
        return {k: instantiate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    return value


def _accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_model(job: dict[str, Any]) -> Any:
    """The model of ``job`` with the benchmark's evaluator, no visualizer and the profile's input size."""
    from benchmarks.profiles import offline_backbones

    cls = _import(job["model"]["class_path"])
    kwargs = instantiate(job["model"]["init_args"])
    if _accepts(cls, "evaluator"):
        kwargs["evaluator"] = default_evaluator()
    if _accepts(cls, "visualizer"):
        kwargs.setdefault("visualizer", False)
    image_size = job["image_size"]
    ours = job["model"]["ours"]
    # our cpu configs set their own input size and pre-processor; anomalib's built-ins get the profile's
    if image_size and not ours and _accepts(cls, "pre_processor") and "pre_processor" not in kwargs:
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=(image_size, image_size))
    context = offline_backbones() if job["offline_backbones"] and not ours else contextlib.nullcontext()
    with context:
        return cls(**kwargs)


def build_datamodule(job: dict[str, Any], seed: int) -> Any:
    """The datamodule of ``job``, set up, its training set capped to ``max_train_images``."""
    from lightning.pytorch.trainer.states import TrainerFn

    datamodule = _import(job["data"]["class_path"])(**job["data"]["init_args"])
    datamodule.prepare_data()
    datamodule.setup(TrainerFn.FITTING)  # a TrainerFn stage marks it set up, so Lightning keeps the subset
    cap = job.get("max_train_images")
    train = datamodule.train_data
    if cap and len(train) > cap:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(train), size=cap, replace=False))
        train.samples = train.samples.iloc[keep].reset_index(drop=True)
    return datamodule


def input_size(model: Any, job: dict[str, Any]) -> tuple[int, int]:
    """Side of the raw images timed and exported: the pre-processor's resize, else the profile's, else 256."""
    transform = getattr(getattr(model, "pre_processor", None), "transform", None)
    for step in getattr(transform, "transforms", [transform]):
        size = getattr(step, "size", None)
        if size:
            size = list(size) if isinstance(size, (list, tuple)) else [size, size]
            return (int(size[0]), int(size[-1]))
    if job["image_size"]:
        return (job["image_size"], job["image_size"])
    return (256, 256)


def heatmap_images(datamodule: Any, count: int) -> tuple[Any, list[str]]:
    """The first ``count`` defective test images by path (the same for every model): ``(images, masks), paths``.

    ``images`` is ``(N, 3, H, W)`` in [0, 1] (before the model's pre-processor), ``masks`` ``(N, H, W)``.
    """
    import torch

    test = datamodule.test_data
    samples = test.samples
    order = samples.assign(_i=range(len(samples))).sort_values("image_path")
    defective = order[order["label_index"] == 1]["_i"].tolist()[:count]
    items = [test[i] for i in defective]
    size = items[0].image.shape[-2:]
    images = torch.stack([torch.nn.functional.interpolate(it.image[None], size=size)[0] for it in items])
    masks = [torch.zeros(size) if it.gt_mask is None else it.gt_mask.float() for it in items]
    masks = torch.cat([torch.nn.functional.interpolate(m.reshape(1, 1, *m.shape[-2:]), size=size)[0] for m in masks])
    return (images, masks), [str(it.image_path) for it in items]


class ProgressFile:
    """Writes the job's stage, epoch and batch to a small JSON file the runner polls for its display."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._last = 0.0

    def write(self, stage: str, force: bool = True, **info: Any) -> None:
        """Write ``stage`` and ``info`` (at most every 0.5 s unless ``force``)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._last < 0.5):
            return
        self._last = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stage": stage, **info}))
        tmp.replace(self.path)

    def callback(self) -> Any:
        """A Lightning callback reporting epochs and batches of training and testing."""
        from lightning.pytorch import Callback

        progress = self

        class _Callback(Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
                batch = args[-1] if args else kwargs.get("batch_idx", 0)
                progress.write(
                    "train",
                    force=False,
                    epoch=trainer.current_epoch + 1,
                    max_epochs=trainer.max_epochs,
                    batch=int(batch) + 1,
                    batches=int(trainer.num_training_batches),
                )

            def on_validation_start(self, trainer: Any, *args: Any) -> None:
                progress.write("validate", epoch=trainer.current_epoch + 1, max_epochs=trainer.max_epochs)

            def on_test_start(self, trainer: Any, *args: Any) -> None:
                progress.write("test")

        return _Callback()


def save_partial(job: dict[str, Any], record: dict[str, Any]) -> None:
    """Write the record measured so far, so that a worker killed later (timeout) keeps it."""
    path = Path(job["record"]).with_suffix(".sofar.json")
    path.write_text(json.dumps({**record, "error": record.get("error")}, indent=2, default=str))


def run_job(job: dict[str, Any], record: dict[str, Any]) -> None:
    """Run ``job``, filling ``record`` as measurements arrive (so a crash keeps what was measured)."""
    import torch
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from benchmarks import measure

    threads = job["threads"]
    torch.set_num_threads(threads)
    progress = ProgressFile(job.get("progress_file"))
    progress.write("setup")
    seed_everything(job["seed"], workers=True)
    artifacts = Path(job["artifacts_dir"])
    artifacts.mkdir(parents=True, exist_ok=True)

    datamodule = build_datamodule(job, job["seed"])
    record["train_images"] = len(datamodule.train_data)
    record["test_images"] = len(datamodule.test_data)
    model = build_model(job)
    size = input_size(model, job)
    record["input_size"] = size[0]

    trainer_args = {
        **job["model"].get("trainer_args", {}),
        "max_epochs": job["max_epochs"],
        "default_root_dir": artifacts,
        "accelerator": "cpu",
        "devices": 1,
    }
    engine = Engine(
        **trainer_args,
        logger=False,
        enable_progress_bar=job.get("progress_bar", True),
        deterministic="warn",
        callbacks=[progress.callback()],
    )
    start = time.perf_counter()
    with measure.PeakMemory() as memory:
        engine.fit(model=model, datamodule=datamodule)
    record["train_time_s"] = time.perf_counter() - start
    record["train_peak_mem_mb"] = memory.peak / measure.MIB
    record["memory_method"] = memory.method
    record["epochs"] = int(engine.trainer.current_epoch)

    save_partial(job, record)
    start = time.perf_counter()
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    record["test_time_s"] = time.perf_counter() - start
    metrics = results[0] if results else {}
    for name in METRIC_NAMES:
        value = metrics.get(name)
        record[name] = float(value) if value is not None else None

    checkpoint = artifacts / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    record["checkpoint_mb"] = measure.file_mb(checkpoint)
    record["buffers_mb"] = measure.buffer_bytes(model.model) / measure.MIB
    record["params_m"] = sum(p.numel() for p in model.model.parameters()) / 1e6

    save_partial(job, record)
    model = model.cpu().eval()
    progress.write("latency (torch)")
    for batch in job["batch_sizes"]:
        stats = measure.torch_latency(model, size, batch, job["warmup"], job["repeats"])
        record[f"torch_b{batch}_latency_ms"] = stats["latency_ms"]
        record[f"torch_b{batch}_throughput_ips"] = stats["throughput_ips"]
        record[f"torch_b{batch}_peak_mem_mb"] = stats["peak_mem_mb"]

    if job["heatmap_images"]:
        (images, masks), paths = heatmap_images(datamodule, job["heatmap_images"])
        with torch.inference_mode():
            output = model(images)
        maps = output.anomaly_map
        if maps is not None:
            maps = torch.nn.functional.interpolate(maps.reshape(len(images), 1, *maps.shape[-2:]), size=size)[:, 0]
            images = torch.nn.functional.interpolate(images, size=size)
            masks = torch.nn.functional.interpolate(masks[:, None], size=size)[:, 0]
            np.savez_compressed(
                artifacts / "heatmaps.npz",
                images=images.numpy().astype(np.float16),
                masks=masks.numpy().astype(np.uint8),
                maps=maps.float().numpy().astype(np.float16),
                scores=output.pred_score.float().reshape(-1).numpy(),
                paths=np.array(paths),
            )
            record["heatmaps"] = str(artifacts / "heatmaps.npz")

    if not job["openvino"]:
        return
    save_partial(job, record)
    progress.write("export (OpenVINO)")
    try:
        xml = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=artifacts, input_size=size)
        record["openvino_bin_mb"] = measure.file_mb(Path(xml).with_suffix(".bin"))
        probe = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = model(probe).pred_score.float().reshape(-1).numpy()
        probe_file = artifacts / "parity_probe.npz"
        np.savez(probe_file, images=probe.numpy(), scores=reference)
        for precision in job["openvino_precisions"]:
            progress.write(f"latency (OpenVINO {precision})")
            save_partial(job, record)
            result = measure.openvino_in_subprocess(
                xml,
                precision,
                threads=threads,
                image_size=size,
                batch_sizes=job["batch_sizes"],
                warmup=job["warmup"],
                repeats=job["repeats"],
                probe_file=probe_file,
                timeout_s=job.get("openvino_timeout_s", 300),
            )
            record.update({f"ov_{precision}_{key}": value for key, value in result.items()})
    except Exception as error:  # noqa: BLE001  (any export failure is recorded, the torch numbers stay)
        record["export_error"] = f"{type(error).__name__}: {error}"[:300]
        Path(job["export_traceback"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["export_traceback"]).write_text(traceback.format_exc())


def main(argv: list[str] | None = None) -> int:
    """Run the job file named on the command line; write its record; exit 1 on failure."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    record: dict[str, Any] = {"error": None}
    start = time.perf_counter()
    status = 0
    try:
        run_job(job, record)
    except Exception as error:  # noqa: BLE001  (the record says what failed; the runner goes on)
        record["error"] = f"{type(error).__name__}: {error}"[:300]
        Path(job["traceback"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["traceback"]).write_text(traceback.format_exc())
        status = 1
    record["wall_time_s"] = time.perf_counter() - start
    Path(job["record"]).write_text(json.dumps(record, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
