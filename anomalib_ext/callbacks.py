# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""Lightning callbacks for deployment: per-image results in files a production line can read.

:class:`PredictionsWriter` writes one row per image during ``anomalib predict`` (or ``Engine.predict``,
and ``Engine.test``, where the ground truth is added) to a CSV file and a JSON-lines file: the image
path, the anomaly score, the decision, the threshold that decided it and the heat map anomalib's
visualizer wrote for the image. A PLC gateway, a database loader or a spreadsheet reads either file.

The decision threshold can be changed at deployment without retraining. anomalib's post-processor
maps every score to ``[0, 1]`` with the threshold learnt on the validation images at ``0.5``
(``((score - threshold) / (max - min) + 0.5)``, clamped; this package's models use an order-preserving
variant with the same 0.5 point), and labels an image anomalous when its normalised score is above
``1 - image_sensitivity`` (0.5 by default). ``PredictionsWriter(threshold=t)`` labels an image anomalous
when that normalised score is above ``t`` instead: ``t > 0.5`` flags fewer images, ``t < 0.5`` more.
The OpenVINO export carries the same normalised ``pred_score``, so the same ``t`` applies there
(``docs/deployment.md``).

Example:
    Switched on from a config (``anomalib predict --config predict.yaml``)::

        trainer:
          callbacks:
            - class_path: anomalib_ext.callbacks.PredictionsWriter
              init_args:
                threshold: 0.6

    or from Python:

    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.callbacks import PredictionsWriter
    >>> engine = Engine(callbacks=[PredictionsWriter(output_dir="line3", threshold=0.6)])  # doctest: +SKIP
    >>> engine.predict(model, data_path="new_images/", ckpt_path="model.ckpt")  # doctest: +SKIP

See Also:
    :class:`anomalib.post_processing.PostProcessor`, :class:`anomalib.visualization.ImageVisualizer`.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import IO, Any

import torch
from anomalib.post_processing import PostProcessor
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["PREDICTION_COLUMNS", "PredictionsWriter"]

# Columns of both files, in order; ``gt_label`` only when the images have labels (Engine.test).
PREDICTION_COLUMNS = ("image_path", "score", "label", "threshold", "heat_map")


class PredictionsWriter(Callback):
    """Write each image's score, decision, threshold and heat-map path to a CSV and a JSON-lines file.

    Args:
        output_dir: Folder of the two files; ``None`` (default) = the run's folder
            (``trainer.default_root_dir``, where anomalib also writes the heat maps).
        threshold: Decision threshold on the score the model reports (anomalib's normalised score,
            ``0.5`` = the threshold learnt in training). ``None`` (default) keeps the model's own
            decision (``pred_label``, i.e. ``1 - image_sensitivity``). An image is anomalous when its
            score is **above** the threshold, as in anomalib.
        file_name: Stem of the files; ``None`` (default) = ``predictions`` when predicting
            (``predictions.csv``, ``predictions.jsonl``) and ``test_predictions`` when testing, so that a
            test and a prediction in the same run folder keep both files.

    Raises:
        ValueError: ``threshold`` is not a finite number, or ``file_name`` is empty or a path.

    Files (one row per image, written as each batch finishes, the files truncated when a run starts):

    - ``image_path``: the image file;
    - ``score``: the image's anomaly score after anomalib's post-processor;
    - ``label``: ``1`` anomalous, ``0`` normal (empty in the CSV and ``null`` in JSON when the model
      gives no decision and no ``threshold`` is set);
    - ``threshold``: the threshold that made the decision;
    - ``heat_map``: the heat-map image anomalib's visualizer wrote for this image, empty / ``null`` when
      it wrote none (visualizer off);
    - ``gt_label`` (``Engine.test`` only): the ground truth.

    Under multi-process prediction, rank ``r > 0`` writes ``<file_name>.rank<r>.csv`` / ``.jsonl``.
    After a run, ``csv_path`` and ``jsonl_path`` hold the paths written.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        threshold: float | None = None,
        file_name: str | None = None,
    ) -> None:
        super().__init__()
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold)
        ):
            msg = (
                f"PredictionsWriter threshold={threshold!r} is invalid: expected a finite number on the "
                "model's score scale (anomalib's normalised score: between 0 and 1, 0.5 = the trained threshold), "
                "or None for the model's own decision."
            )
            raise ValueError(msg)
        if file_name is not None and (not file_name or Path(file_name).name != file_name):
            msg = f"PredictionsWriter file_name={file_name!r} is invalid: expected a plain file stem ('predictions')."
            raise ValueError(msg)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.threshold = float(threshold) if threshold is not None else None
        self.file_name = file_name
        self.csv_path: Path | None = None
        self.jsonl_path: Path | None = None
        self._files: list[IO[str]] = []
        self._csv: Any = None
        self._jsonl: IO[str] | None = None
        self._pending: Any = None
        self._with_ground_truth = False
        self._started = 0.0

    # --- Lightning hooks --------------------------------------------------------------------------

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open (truncate) the two files."""
        self._open(trainer, with_ground_truth=False, default_name="predictions")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open (truncate) the two files, with a ``gt_label`` column."""
        self._open(trainer, with_ground_truth=True, default_name="test_predictions")

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Write the previous batch, now post-processed and visualised."""
        self._flush(trainer, pl_module)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Write the previous batch, now post-processed and visualised."""
        self._flush(trainer, pl_module)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep the batch until the other callbacks are done with it.

        Lightning calls this callback before the model's own callbacks (post-processor, visualizer),
        which finish the same batch object in place; it is written at the next batch's start.
        """
        self._pending = outputs

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep the batch until the other callbacks are done with it (see ``on_predict_batch_end``)."""
        self._pending = outputs

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the last batch."""
        self._flush(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the last batch."""
        self._flush(trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the files."""
        self._close()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the files."""
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close the files, keeping the rows written so far."""
        self._close()

    # --- helpers ----------------------------------------------------------------------------------

    def _open(self, trainer: Trainer, with_ground_truth: bool, default_name: str) -> None:
        self._close()
        folder = self.output_dir if self.output_dir is not None else Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = self.file_name or default_name
        stem = stem if trainer.global_rank == 0 else f"{stem}.rank{trainer.global_rank}"
        self.csv_path, self.jsonl_path = folder / f"{stem}.csv", folder / f"{stem}.jsonl"
        self._with_ground_truth = with_ground_truth
        self._started = time.time()
        columns = [*PREDICTION_COLUMNS, "gt_label"] if with_ground_truth else list(PREDICTION_COLUMNS)
        csv_file = self.csv_path.open("w", newline="", encoding="utf-8")
        self._jsonl = self.jsonl_path.open("w", encoding="utf-8")
        self._files = [csv_file, self._jsonl]
        self._csv = csv.DictWriter(csv_file, fieldnames=columns)
        self._csv.writeheader()
        self._pending = None

    def _close(self) -> None:
        for file in self._files:
            file.close()
        self._files, self._csv, self._jsonl, self._pending = [], None, None, None

    def _flush(self, trainer: Trainer, pl_module: LightningModule) -> None:
        batch, self._pending = self._pending, None
        if batch is None or self._csv is None or self._jsonl is None:
            return
        for row in self.rows(batch, trainer, pl_module):
            self._csv.writerow({key: "" if value is None else value for key, value in row.items()})
            self._jsonl.write(json.dumps(row) + "\n")
        for file in self._files:
            file.flush()

    def model_threshold(self, pl_module: LightningModule) -> float | None:
        """The threshold behind the model's own ``pred_label``, on the scale of its scores (or ``None``)."""
        post_processor = getattr(pl_module, "post_processor", None)
        if not isinstance(post_processor, PostProcessor) or not post_processor.enable_thresholding:
            return None
        if post_processor.enable_normalization:
            return float(post_processor.normalized_image_threshold)
        value = float(post_processor.image_threshold)
        return None if math.isnan(value) else value

    def rows(self, batch: Any, trainer: Trainer, pl_module: LightningModule) -> list[dict[str, Any]]:
        """The file rows of one post-processed batch."""
        score_tensor = batch.pred_score.detach().reshape(-1).cpu()
        scores = score_tensor.tolist()
        paths = list(batch.image_path) if batch.image_path is not None else [None] * len(scores)
        if self.threshold is not None:
            threshold: float | None = self.threshold
            # compared in the scores' dtype, as anomalib's post-processor and the exported graph do
            above = score_tensor > torch.tensor(self.threshold, dtype=score_tensor.dtype)
            labels: list[int | None] = above.int().tolist()
        else:
            threshold = self.model_threshold(pl_module)
            pred_label = getattr(batch, "pred_label", None)
            labels = (
                pred_label.detach().reshape(-1).int().cpu().tolist() if pred_label is not None else [None] * len(scores)
            )
        heat_maps = [self._heat_map(path, trainer, pl_module, self._started) for path in paths]
        rows = [
            {"image_path": path, "score": score, "label": label, "threshold": threshold, "heat_map": heat_map}
            for path, score, label, heat_map in zip(paths, scores, labels, heat_maps, strict=True)
        ]
        if self._with_ground_truth:
            gt_label = getattr(batch, "gt_label", None)
            truth = gt_label.reshape(-1).int().cpu().tolist() if gt_label is not None else [None] * len(rows)
            for row, value in zip(rows, truth, strict=True):
                row["gt_label"] = value
        return rows

    @staticmethod
    def _heat_map(image_path: str | None, trainer: Trainer, pl_module: LightningModule, since: float) -> str | None:
        """Where anomalib's ``ImageVisualizer`` wrote this image's heat map in this run (``since``), if it did."""
        if not image_path:
            return None
        visualizers = [callback for callback in trainer.callbacks if isinstance(callback, ImageVisualizer)]
        visualizer = getattr(pl_module, "visualizer", None)
        if isinstance(visualizer, ImageVisualizer) and visualizer not in visualizers:
            visualizers.append(visualizer)
        datamodule = getattr(trainer, "datamodule", None)
        for candidate in visualizers:
            if candidate.output_dir is None:
                continue
            path = generate_output_filename(
                input_path=image_path,
                output_path=candidate.output_dir,
                dataset_name=getattr(datamodule, "name", None) if datamodule else None,
                category=getattr(datamodule, "category", None) if datamodule else None,
                mkdir=False,
            )
            # a file left by an earlier run at the same place is not this run's heat map (1 s: mtime resolution)
            if path.is_file() and path.stat().st_mtime >= since - 1.0:
                return str(path)
        return None
