"""Learning curves: test-set metrics at chosen optimiser steps of one training run.

:class:`LearningCurve` is a Lightning callback. At each listed global step (Lightning's
``trainer.global_step``: optimiser steps) it evaluates the model on the test set (image AUROC, and
pixel AUROC and AUPRO when the dataset has masks: the package's evaluator's metrics, built by
:func:`anomalib_ext.models.defaults.default_evaluator`), reads the training losses the model logged,
and appends a point ``{step, requested_step, epoch, train_time_s, eval_time_s, metrics..., losses...}``:
``epoch`` is the number of epochs done (fractional within an epoch), ``train_time_s`` counts training
only (since ``on_train_start``, the evaluations excluded).

The evaluation leaves training as it was:

- every submodule's ``training`` flag is saved and restored exactly, one module at a time (a
  blanket ``.train()`` would put frozen backbones, kept in eval mode by their models, back into
  training mode);
- the model runs in eval mode under ``torch.no_grad()``;
- the random states of torch, numpy and Python are restored (iterating a ``DataLoader`` draws a
  seed from torch's global generator), so a seeded run trains the same weights with or without a
  curve.

Images go through the model's pre-processor the way anomalib 2.7 applies it in its batch hooks
(``pre_processor.transform(image, gt_mask)``), then through the torch model ``pl_module.model``;
ranking metrics need no post-processing.

Memory-bank models (PaDiM, PatchCore) have no optimiser steps: they are fitted at the end of their
single epoch, so their curve is one point after training.

The test set is used here to choose schedule lengths, not to report a result or to select a model.

Example:
    >>> curve = LearningCurve([50, 100], datamodule.test_dataloader)  # doctest: +SKIP
    >>> Engine(max_steps=100, max_epochs=-1, callbacks=[curve]).fit(model, datamodule)  # doctest: +SKIP
    >>> curve.points[0]["step"], sorted(curve.points[0])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

#: The metrics of a curve point, by the evaluator's names.
CURVE_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


@contextlib.contextmanager
def preserved_state(module: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``module`` in eval mode; restore every submodule's flag and the random states."""
    flags = [(sub, sub.training) for sub in module.modules()]
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()  # noqa: NPY002  (the legacy global state is what seeding sets)
    python_state = random.getstate()
    module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)


def curve_metrics() -> list[Any]:
    """Fresh metrics of a curve point: the evaluator's image AUROC, pixel AUROC and AUPRO."""
    from anomalib_ext.models.defaults import default_evaluator

    return [metric for metric in default_evaluator().test_metrics if metric.name in CURVE_METRICS]


def evaluate(pl_module: LightningModule, batches: Iterable[Any]) -> dict[str, float | None]:
    """Curve metrics of ``pl_module`` on ``batches`` (anomalib batches as the test dataloader yields them).

    A metric that cannot be computed (pixel metrics without masks) is ``None``.
    """
    metrics = curve_metrics()
    transform = getattr(getattr(pl_module, "pre_processor", None), "transform", None)
    with preserved_state(pl_module), torch.no_grad():
        for batch in batches:
            image, mask = batch.image, batch.gt_mask
            if transform is not None:
                image, mask = transform(image, mask)
            output = pl_module.model(image.to(pl_module.device))
            anomaly_map = output.anomaly_map
            if anomaly_map is not None and mask is not None and anomaly_map.shape[-2:] != mask.shape[-2:]:
                anomaly_map = torch.nn.functional.interpolate(
                    anomaly_map.reshape(len(image), 1, *anomaly_map.shape[-2:]).float(),
                    size=mask.shape[-2:],
                    mode="bilinear",
                ).reshape(len(image), *mask.shape[-2:])
            scored = batch.update(
                in_place=False,
                image=image,
                gt_mask=mask,
                pred_score=output.pred_score.cpu(),
                anomaly_map=None if anomaly_map is None else anomaly_map.cpu(),
            )
            for metric in metrics:
                metric.update(scored)
    values: dict[str, float | None] = {}
    for metric in metrics:
        value = metric.compute()
        values[metric.name] = None if value is None else float(value)
    return values


def logged_losses(trainer: Trainer) -> dict[str, float]:
    """The training quantities the model logged (``train*`` keys of ``trainer.callback_metrics``)."""
    return {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if name.startswith("train") and torch.as_tensor(value).numel() == 1
    }


class LearningCurve(Callback):
    """Evaluate the model at the given global steps of training (see the module docstring).

    Args:
        steps: Global steps (optimiser steps) after which to evaluate; the last one usually equals the
            trainer's ``max_steps``.
        batches: A callable returning an iterable of test batches (e.g. ``datamodule.test_dataloader``),
            called at each evaluation.
        on_point: Called with each new point (e.g. to save it or show progress).
    """

    def __init__(
        self,
        steps: Sequence[int],
        batches: Callable[[], Iterable[Any]],
        on_point: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not steps or any(int(step) <= 0 for step in steps):
            msg = f"Curve steps must be positive integers, got {list(steps)}."
            raise ValueError(msg)
        self.steps = sorted({int(step) for step in steps})
        self.batches = batches
        self.on_point = on_point
        self.points: list[dict[str, Any]] = []
        self.eval_time_s = 0.0
        self.eval_cpu_s = 0.0
        self._pending: list[int] = []
        self._started = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the training clock; nothing is evaluated before the first listed step."""
        del trainer, pl_module
        self.points = []
        self.eval_time_s = 0.0
        self.eval_cpu_s = 0.0
        self._pending = list(self.steps)
        self._started = time.perf_counter()

    @staticmethod
    def _memory_bank(pl_module: LightningModule) -> bool:
        from anomalib.models.components import MemoryBankMixin

        return isinstance(pl_module, MemoryBankMixin)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Evaluate when the global step reaches the next listed step (once per listed step)."""
        del outputs, batch
        if self._memory_bank(pl_module):
            return
        step = int(trainer.global_step)
        reached = [listed for listed in self._pending if listed <= step]
        if reached:
            self._pending = [listed for listed in self._pending if listed > step]
            batches = trainer.num_training_batches
            fraction = (batch_idx + 1) / batches if batches and batches != float("inf") else 0.0
            self._point(trainer, pl_module, requested=reached[-1], epoch=trainer.current_epoch + fraction)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A final point when training stopped before the last listed step (memory banks, early stopping)."""
        if self._pending and (not self.points or self.points[-1]["step"] != int(trainer.global_step)):
            self._point(trainer, pl_module, requested=None, epoch=float(trainer.current_epoch))
        self._pending = []

    def _point(self, trainer: Trainer, pl_module: LightningModule, requested: int | None, epoch: float) -> None:
        train_time = time.perf_counter() - self._started - self.eval_time_s
        start, start_cpu = time.perf_counter(), time.process_time()
        metrics = evaluate(pl_module, self.batches())
        eval_time = time.perf_counter() - start
        self.eval_time_s += eval_time
        self.eval_cpu_s += time.process_time() - start_cpu
        point = {
            "step": int(trainer.global_step),
            "requested_step": requested,
            "epoch": round(epoch, 4),
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            **metrics,
            **logged_losses(trainer),
        }
        self.points.append(point)
        if self.on_point is not None:
            self.on_point(point)
