"""One benchmark job (a model on one dataset category), run in its own process.

The runner runs :func:`main` in a process of its own for every job (a child forked from the run's
:mod:`benchmarks.zygote`, which has imported this module once; ``python -m benchmarks.worker
<job.json>`` does the same by hand),
so a crash, a leak or a hung model cannot take the other jobs down and each job's peak memory is its own. The job file
holds everything needed (model, data, profile settings, output paths); the worker writes the
result record (JSON) and, on failure, the traceback next to it.

Steps, each timed or measured: build the model from its ``model:`` section as anomalib's CLI does
(:func:`build_model`) and the datamodule; train with anomalib's Engine, without a validation pass
unless the model monitors a validation quantity (:func:`validation_reason`; its validation set is
then a split of the training images) and, in the learning-curve mode, with
:class:`benchmarks.curve.LearningCurve`; test with the package's evaluator
(:func:`anomalib_ext.models.defaults.default_evaluator`); save the checkpoint; measure torch eager
latency; store heat maps of fixed test images; export to OpenVINO and measure its latency at each
precision (with ``int8``, also the FP16 and INT8 exports and the test-set image AUROC of each). A
failure after training keeps the numbers measured so far (``export_error`` for the export steps).

``instantiate`` and ``_import`` stay importable for the experiment scripts that use them.
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
from lightning.pytorch import Callback

from anomalib_ext.models.defaults import RANKING_METRICS, THRESHOLDED_METRICS, default_evaluator

logger = logging.getLogger("benchmarks.worker")

METRIC_NAMES = (*RANKING_METRICS, *THRESHOLDED_METRICS)


def _import(class_path: str) -> Any:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(value: Any) -> Any:
    """Instantiate ``{"class_path": ..., "init_args": {...}}`` values recursively (jsonargparse's form).

    Used for the ``trainer:`` section of a config (callbacks); models are built by :func:`build_model`.
    """
    if isinstance(value, dict) and "class_path" in value:
        cls = _import(value["class_path"])
        return cls(**{k: instantiate(v) for k, v in (value.get("init_args") or {}).items()})
    if isinstance(value, dict):
        return {k: instantiate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    return value


def model_arguments(section: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """Class and instantiated init arguments of a config's ``model:`` section, parsed as anomalib's CLI does.

    jsonargparse resolves ``class_path`` among anomalib's models (a short name such as ``Padim`` works),
    checks every init argument against the class's signature and types (a config the CLI rejects fails
    here with jsonargparse's message), and instantiates nested ``class_path`` values (pre-processor,
    transforms). The model itself is left to the caller, which adds the harness's components.

    Raises:
        ValueError: The section does not parse (unknown argument, wrong type, unknown class).
    """
    from anomalib.models import AnomalibModule
    from jsonargparse import ArgumentParser

    import anomalib_ext  # noqa: F401  (registers our models with anomalib)

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalibModule, "model", required=True)
    try:
        parsed = parser.parse_object({"model": section})
        cls = _import(parsed.model.class_path)
        arguments = ArgumentParser(exit_on_error=False)
        arguments.add_class_arguments(cls, "model", instantiate=False, fail_untyped=False)
        init = arguments.instantiate_classes(arguments.parse_object({"model": parsed.model.init_args.as_dict()}))
    except Exception as error:  # jsonargparse raises ArgumentError and others
        msg = f"Model section {section.get('class_path')!r} does not parse as anomalib's CLI reads it: {error}"
        raise ValueError(msg) from error
    return cls, dict(vars(init.model))


def build_model(job: dict[str, Any]) -> Any:
    """The model of ``job``: its ``model:`` section plus the harness's components.

    Every model gets the package's evaluator, anomalib_ext's order-preserving post-processor (ranking
    metrics see no clamping ties) and no visualizer; anomalib's built-ins also get the profile's
    input size. Built-ins are constructed with offline backbones under the ``cpu`` profile.
    """
    from anomalib_ext.post_processing import OrderPreservingPostProcessor
    from benchmarks.profiles import offline_backbones

    section = {"class_path": job["model"]["class_path"], "init_args": job["model"]["init_args"]}
    cls, kwargs = model_arguments(section)
    kwargs["evaluator"] = default_evaluator()
    kwargs["post_processor"] = OrderPreservingPostProcessor()
    kwargs["visualizer"] = False
    image_size = job["image_size"]
    ours = job["model"]["ours"]
    # our configs set their own input size and pre-processor; anomalib's built-ins get the profile's
    if image_size and not ours and kwargs.get("pre_processor", True) is True:
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=(image_size, image_size))
    context = offline_backbones() if job["offline_backbones"] and not ours else contextlib.nullcontext()
    with context:
        return cls(**kwargs)


def validation_reason(model: Any, trainer_args: dict[str, Any]) -> str | None:
    """Why the model needs a validation pass during training, or ``None`` when it does not.

    The harness's metrics are threshold-free, so validation is skipped unless a callback the model
    configures (``configure_callbacks``) or the config's ``trainer.callbacks`` lists monitors a
    quantity that only validation produces (``monitor`` not starting with ``train``), e.g. N2N's
    best-epoch checkpoint on ``val_loss`` or an early stopping on a validation metric.
    """
    callbacks = list(trainer_args.get("callbacks") or [])
    with contextlib.suppress(Exception):  # a model may need its trainer to list callbacks
        configured = model.configure_callbacks()
        callbacks += list(configured) if isinstance(configured, (list, tuple)) else [configured]
    for callback in callbacks:
        if isinstance(callback, dict):
            monitor = (callback.get("init_args") or {}).get("monitor")
            name = str(callback.get("class_path", "callback")).rpartition(".")[2]
        else:
            monitor = getattr(callback, "monitor", None)
            name = type(callback).__name__
        if monitor and not str(monitor).startswith("train"):
            return f"{name} monitors {monitor!r}"
    return None


class CoresetPatchLimit(Callback):
    """Seeded random subsample of PatchCore's training patches before anomalib's greedy coreset search.

    Lightning calls the callbacks' ``on_train_epoch_end`` before the module's, where anomalib's
    PatchCore runs ``fit`` (the greedy search over ``model.embedding_store``). This keeps at most
    ``max_patches`` rows of the stored embeddings, drawn with ``seed``; models without an
    ``embedding_store`` are untouched. ``patches_before`` records how many there were.

    Args:
        max_patches: Most patches passed to the greedy search.
        seed: Seed of the draw.
    """

    def __init__(self, max_patches: int, seed: int) -> None:
        self.max_patches = max_patches
        self.seed = seed
        self.patches_before: int | None = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Replace the stored embeddings by a random subsample of at most ``max_patches`` rows."""
        import torch

        del trainer
        store = getattr(getattr(pl_module, "model", None), "embedding_store", None)
        if not isinstance(store, list) or not store:
            return
        embedding = torch.vstack(store)
        self.patches_before = len(embedding)
        if len(embedding) > self.max_patches:
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(len(embedding), generator=generator)[: self.max_patches]
            embedding = embedding[keep.sort().values]
        store.clear()
        store.append(embedding)


#: Share of the training images held out for validation when a model needs it and its config names none.
VALIDATION_SPLIT_RATIO = 0.2


def build_datamodule(job: dict[str, Any], seed: int, validation: bool = False) -> Any:
    """The datamodule of ``job``, set up, its training set capped to ``max_train_images``.

    With ``validation`` (the model selects or stops on a validation quantity) the validation set is a
    seeded split of the training images (``val_split_mode="from_train"``, ratio
    :data:`VALIDATION_SPLIT_RATIO`) unless the job's data arguments (from the model's config) set
    ``val_split_mode``: model selection never looks at test images.
    """
    from lightning.pytorch.trainer.states import TrainerFn

    cls = _import(job["data"]["class_path"])
    arguments = dict(job["data"]["init_args"])
    if validation and "val_split_mode" not in arguments and "val_split_mode" in inspect.signature(cls).parameters:
        arguments.update(
            {"val_split_mode": "from_train", "val_split_ratio": VALIDATION_SPLIT_RATIO, "seed": seed}
            | {k: v for k, v in arguments.items() if k in {"val_split_ratio", "seed"}}
        )
    datamodule = cls(**arguments)
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
    """Writes the job's stage, epoch, step and batch to a small JSON file the runner polls for its display."""

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

    def callback(self) -> Callback:
        """A Lightning callback reporting epochs, steps and batches of training and testing."""
        progress = self

        class _Callback(Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
                batch = args[-1] if args else kwargs.get("batch_idx", 0)
                progress.write(
                    "train",
                    force=False,
                    epoch=trainer.current_epoch + 1,
                    max_epochs=trainer.max_epochs,
                    step=int(trainer.global_step),
                    max_steps=trainer.max_steps,
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


def trainer_arguments(job: dict[str, Any], artifacts: Path) -> dict[str, Any]:
    """Engine (Trainer) arguments of ``job``: the config's trainer section and the job's schedule."""
    arguments = {key: instantiate(value) for key, value in job["model"].get("trainer_args", {}).items()}
    for key in ("max_epochs", "max_steps"):
        if job.get(key) is not None:
            arguments[key] = job[key]
    arguments.update({"default_root_dir": artifacts, "accelerator": "cpu", "devices": 1})
    return arguments


def run_job(job: dict[str, Any], record: dict[str, Any]) -> None:
    """Run ``job``, filling ``record`` as measurements arrive (so a crash keeps what was measured)."""
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from benchmarks import measure
    from benchmarks.curve import LearningCurve

    threads = job["threads"]
    torch.set_num_threads(threads)
    progress = ProgressFile(job.get("progress_file"))
    progress.write("setup")
    seed_everything(job["seed"], workers=True)
    artifacts = Path(job["artifacts_dir"])
    artifacts.mkdir(parents=True, exist_ok=True)

    model = build_model(job)
    size = input_size(model, job)
    record["input_size"] = size[0]
    trainer_args = trainer_arguments(job, artifacts)
    reason = validation_reason(model, trainer_args)
    if reason is None:
        trainer_args.update({"limit_val_batches": 0, "num_sanity_val_steps": 0})

    datamodule = build_datamodule(job, job["seed"], validation=reason is not None)
    record["train_images"] = len(datamodule.train_data)
    record["test_images"] = len(datamodule.test_data)
    record["max_train_images"] = job.get("max_train_images")
    if reason is None:
        record["validation"] = "skipped"
    else:
        mode = getattr(datamodule, "val_split_mode", None)
        record["validation"] = f"{reason}; validation set: {getattr(mode, 'value', mode)}"
        record["val_images"] = len(datamodule.val_data) if getattr(datamodule, "val_data", None) else None
    callbacks: list[Callback] = [progress.callback()]
    coreset = None
    if job.get("coreset_max_patches") and hasattr(getattr(model, "model", None), "embedding_store"):
        coreset = CoresetPatchLimit(job["coreset_max_patches"], job["seed"])
        callbacks.append(coreset)
    curve = None
    if job.get("curve_steps"):

        def on_point(point: dict[str, Any]) -> None:
            record.setdefault("curve", []).append(point)
            save_partial(job, record)
            progress.write("curve", step=point["step"])

        curve = LearningCurve(job["curve_steps"], datamodule.test_dataloader, on_point=on_point)
        callbacks.append(curve)
    engine = Engine(
        **trainer_args,
        logger=False,
        enable_progress_bar=job.get("progress_bar", True),
        deterministic="warn",
        callbacks=callbacks,
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    with measure.PeakMemory() as memory:
        engine.fit(model=model, datamodule=datamodule)
    fit_time = time.perf_counter() - start
    record["train_time_s"] = fit_time - (curve.eval_time_s if curve else 0.0)
    # CPU seconds of all threads of the worker (a machine shared with other jobs inflates wall time, not this)
    record["train_cpu_s"] = time.process_time() - start_cpu - (curve.eval_cpu_s if curve else 0.0)
    record["train_peak_mem_mb"] = memory.peak / measure.MIB
    record["memory_method"] = memory.method
    record["epochs"] = int(engine.trainer.current_epoch)
    record["steps"] = int(engine.trainer.global_step)
    if curve is not None:
        record["curve"] = curve.points
        record["curve_eval_time_s"] = curve.eval_time_s
    if coreset is not None:
        record["coreset_patches"] = coreset.patches_before
        record["coreset_max_patches"] = coreset.max_patches

    save_partial(job, record)
    start, start_cpu = time.perf_counter(), time.process_time()
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    record["test_time_s"] = time.perf_counter() - start
    record["test_cpu_s"] = time.process_time() - start_cpu
    metrics = results[0] if results else {}
    for name in METRIC_NAMES:
        value = metrics.get(name)
        record[name] = float(value) if value is not None else None
    if reason is None:
        # no validation pass: the post-processor found no thresholds, so thresholded labels mean nothing
        for name in THRESHOLDED_METRICS:
            record[name] = None

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
        save_heatmaps(model, datamodule, job["heatmap_images"], size, artifacts, record)

    if not job["openvino"]:
        return
    save_partial(job, record)
    export_openvino(engine, model, datamodule, job, size, artifacts, record, progress)


def save_heatmaps(
    model: Any, datamodule: Any, count: int, size: tuple[int, int], artifacts: Path, record: dict[str, Any]
) -> None:
    """Save the anomaly maps of the first ``count`` defective test images (raw, unnormalised) for the grid."""
    import torch

    if not (datamodule.test_data.samples["label_index"] == 1).any():
        return
    (images, masks), paths = heatmap_images(datamodule, count)
    with torch.inference_mode():
        output = model(images)
    maps = output.anomaly_map
    if maps is None:
        return
    maps = torch.nn.functional.interpolate(maps.reshape(len(images), 1, *maps.shape[-2:]).float(), size=size)[:, 0]
    images = torch.nn.functional.interpolate(images, size=size)
    masks = torch.nn.functional.interpolate(masks[:, None], size=size)[:, 0]
    np.savez_compressed(
        artifacts / "heatmaps.npz",
        images=images.numpy().astype(np.float16),
        masks=masks.numpy().astype(np.uint8),
        maps=maps.numpy().astype(np.float32),
        scores=output.pred_score.float().reshape(-1).numpy(),
        paths=np.array(paths),
    )
    record["heatmaps"] = str(artifacts / "heatmaps.npz")


def write_accuracy_probe(datamodule: Any, path: Path) -> Path:
    """The test images' paths and labels, for the OpenVINO accuracy check (JSON)."""
    samples = datamodule.test_data.samples
    path.write_text(
        json.dumps({"paths": samples["image_path"].astype(str).tolist(), "labels": samples["label_index"].tolist()})
    )
    return path


def calibration_datamodule(datamodule: Any) -> Any:
    """A copy of ``datamodule`` whose validation loader yields the training images.

    anomalib's ``INT8_PTQ`` export calibrates on ``datamodule.val_dataloader()``, which is the test
    set under anomalib's default ``val_split_mode``; the copy keeps test images out of the calibration.
    """
    import copy

    calibration = copy.copy(datamodule)
    calibration.val_data = datamodule.train_data
    return calibration


def apply_int8_types(model: Any, job: dict[str, Any], record: dict[str, Any]) -> None:
    """Give ``model``'s class the job's ``int8_types`` (``--int8-types``) and record what the INT8 export quantises.

    The package's quantiser (``AnomalibExtModule._post_training_quantization_ov``) is a classmethod
    reading ``int8_quantised_types``, so the class attribute is set; a worker runs one job. anomalib's
    models have no such attribute (their export quantises every type) and get no record entry.
    """
    cls = type(model)
    if "int8_types" in job:
        types = job["int8_types"]
        cls.int8_quantised_types = None if types is None else tuple(types)
    if hasattr(cls, "int8_quantised_types"):
        types = cls.int8_quantised_types
        record["int8_quantised_types"] = "all" if types is None else "+".join(types)


def export_openvino(
    engine: Any,
    model: Any,
    datamodule: Any,
    job: dict[str, Any],
    size: tuple[int, int],
    artifacts: Path,
    record: dict[str, Any],
    progress: ProgressFile,
) -> None:
    """Export to OpenVINO (f32; with ``job["int8"]`` also FP16 and INT8_PTQ) and measure each IR."""
    import torch
    from anomalib.deploy import CompressionType, ExportType

    from benchmarks import measure

    try:
        xml = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=artifacts, input_size=size)
        record["openvino_bin_mb"] = measure.file_mb(Path(xml).with_suffix(".bin"))
        probe = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = model(probe).pred_score.float().reshape(-1).numpy()
        probe_file = artifacts / "parity_probe.npz"
        np.savez(probe_file, images=probe.numpy(), scores=reference)
        accuracy_file = write_accuracy_probe(datamodule, artifacts / "accuracy_probe.json") if job.get("int8") else None
        common = {
            "threads": job["threads"],
            "image_size": size,
            "batch_sizes": job["batch_sizes"],
            "warmup": job["warmup"],
            "repeats": job["repeats"],
            "probe_file": probe_file,
            "timeout_s": job.get("openvino_timeout_s", 300),
        }
        for precision in job["openvino_precisions"]:
            progress.write(f"latency (OpenVINO {precision})")
            save_partial(job, record)
            accuracy = accuracy_file if precision == "f32" else None
            result = measure.openvino_in_subprocess(xml, precision, accuracy_file=accuracy, **common)
            record.update({f"ov_{precision}_{key}": value for key, value in result.items()})
    except Exception as error:  # noqa: BLE001  (any export failure is recorded, the torch numbers stay)
        record["export_error"] = f"{type(error).__name__}: {error}"[:300]
        Path(job["export_traceback"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["export_traceback"]).write_text(traceback.format_exc())
        return
    if not job.get("int8"):
        return
    apply_int8_types(model, job, record)
    for label, compression in (("fp16", CompressionType.FP16), ("int8", CompressionType.INT8_PTQ)):
        progress.write(f"export (OpenVINO {label})")
        save_partial(job, record)
        try:
            compressed = engine.export(
                model=model,
                export_type=ExportType.OPENVINO,
                export_root=artifacts / label,
                input_size=size,
                compression_type=compression,
                datamodule=calibration_datamodule(datamodule) if compression is CompressionType.INT8_PTQ else None,
            )
            record[f"ov_{label}_bin_mb"] = measure.file_mb(Path(compressed).with_suffix(".bin"))
            progress.write(f"latency (OpenVINO {label})")
            result = measure.openvino_in_subprocess(compressed, "f32", accuracy_file=accuracy_file, **common)
            if "error" in result:
                record[f"ov_{label}_error"] = result.pop("error")
            record.update({f"ov_{label}_{key}": value for key, value in result.items()})
        except Exception as error:  # noqa: BLE001  (recorded; the job's other numbers stand)
            record[f"ov_{label}_error"] = f"{type(error).__name__}: {error}"[:300]
            path = Path(job["export_traceback"]).with_suffix(f".{label}.txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc())


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
