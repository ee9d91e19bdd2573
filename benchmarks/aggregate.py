"""Statistics over seeds and categories of the benchmark's result records (pandas, no plotting).

- :func:`category_statistics`: per dataset x category x model, the mean and the standard deviation
  over seeds of every numeric column (``<column>_mean``, ``<column>_std``).
- :func:`dataset_statistics`: per dataset x model, the mean over categories computed for each seed,
  then its mean and standard deviation over seeds. Only the seeds for which the model finished every
  category count, so each number averages the same categories.
- :func:`curve_frame` and :func:`curve_statistics`: the learning-curve points of the records, and
  their mean and standard deviation over seeds per listed step. A learning curve of separate runs
  (``--curve-runs``) is made of records marked ``curve_run_steps``: in the tables each is a model of
  its own, ``"RBAE (400 steps)"``; on the curve each is the point at its step count.

The standard deviation is the sample one (``ddof=1``), undefined (NaN) for a single seed.

Example:
    >>> records = [
    ...     {"dataset": "D", "category": c, "model": "M", "seed": s, "error": None, "image_AUROC": v}
    ...     for c, s, v in [("a", 0, 0.8), ("b", 0, 0.6), ("a", 1, 0.9), ("b", 1, 0.7)]
    ... ]
    >>> table = dataset_statistics(records_frame(records))
    >>> round(table.loc[0, "image_AUROC_mean"], 3), round(table.loc[0, "image_AUROC_std"], 4)
    (0.75, 0.0707)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

FIRST_COLUMNS = ["dataset", "category", "model", "seed", "profile", "error", "export_error"]
#: Columns that identify a job or describe it without being a measurement.
NOT_MEASURED = {"seed", "settings_hash", "wall_time_s_total", "curve_run_steps"}
#: Training quantities a model may log, in the order a curve prefers them.
LOSS_KEYS = ("train_loss_step", "train_loss", "train_loss_epoch")


def records_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records as a table, identity columns first, in the order given (learning curves left out)."""
    frame = pd.DataFrame([{k: v for k, v in record.items() if k != "curve"} for record in records])
    if "curve_run_steps" in frame:  # a point of a curve of separate runs is a model of its own in the tables
        runs = frame["curve_run_steps"].notna()
        labels = zip(frame["model"][runs], frame["curve_run_steps"][runs], strict=True)
        frame.loc[runs, "model"] = [f"{model} ({int(steps)} steps)" for model, steps in labels]
    for column in FIRST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    if frame["seed"].isna().all():
        frame["seed"] = 0  # records written before seeds were part of a job
    rest = [c for c in frame.columns if c not in FIRST_COLUMNS]
    return frame[FIRST_COLUMNS + rest]


def _order(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.dropna()))


def measured_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric measurement columns of ``frame`` (not identity, not all empty)."""
    columns = []
    for column in frame.columns:
        if column in FIRST_COLUMNS or column in NOT_MEASURED:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().any() and (frame[column].isna() | values.notna()).all():
            columns.append(column)
    return columns


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["error"].isna()]


def category_statistics(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per dataset x category x model: mean and std over seeds of ``columns`` (default: every measurement).

    Adds ``seeds`` (jobs that finished), ``failed`` (jobs with an error) and ``error`` (the first error).
    Rows keep the order of the records.
    """
    columns = list(columns) if columns is not None else measured_columns(frame)
    rows = []
    for (dataset, category, model), group in frame.groupby(["dataset", "category", "model"], sort=False):
        ok = _ok(group)
        row: dict[str, Any] = {"dataset": dataset, "category": category, "model": model}
        for column in columns:
            values = pd.to_numeric(ok[column], errors="coerce").dropna() if column in ok else pd.Series(dtype=float)
            row[f"{column}_mean"] = values.mean() if len(values) else np.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        errors = group["error"].dropna()
        row.update({"seeds": len(ok), "failed": len(errors), "error": errors.iloc[0] if len(errors) else None})
        rows.append(row)
    return pd.DataFrame(rows, columns=_stat_columns(["dataset", "category", "model"], columns, rows))


def _stat_columns(identity: list[str], columns: Sequence[str], rows: list[dict[str, Any]]) -> list[str] | None:
    """The columns of an empty statistics table (so that callers can still select by name)."""
    if rows:
        return None
    return [*identity, *(f"{c}_{s}" for c in columns for s in ("mean", "std")), "seeds"]


def dataset_statistics(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per dataset x model: the per-seed mean over categories, then its mean and std over seeds.

    A seed counts only if the model finished every category of the dataset that the run holds for it
    (``seeds``; ``incomplete_seeds`` counts the others). ``categories`` is how many categories each
    mean covers.
    """
    columns = list(columns) if columns is not None else measured_columns(frame)
    rows = []
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=False):
        categories = _order(group["category"])
        per_seed = []
        incomplete = 0
        for _, seed_group in group.groupby("seed", sort=True):
            ok = _ok(seed_group)
            if set(ok["category"]) != set(categories):
                incomplete += 1
                continue
            per_seed.append({c: pd.to_numeric(ok[c], errors="coerce").mean() for c in columns if c in ok})
        seeds = pd.DataFrame(per_seed, columns=columns)
        row: dict[str, Any] = {"dataset": dataset, "model": model}
        for column in columns:
            values = seeds[column].dropna() if column in seeds else pd.Series(dtype=float)
            row[f"{column}_mean"] = values.mean() if len(values) else np.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row.update({"seeds": len(per_seed), "incomplete_seeds": incomplete, "categories": len(categories)})
        rows.append(row)
    return pd.DataFrame(rows, columns=_stat_columns(["dataset", "model"], columns, rows))


def _loss(point: dict[str, Any]) -> tuple[str | None, float | None]:
    for key in LOSS_KEYS:
        if point.get(key) is not None:
            return key, point[key]
    for key, value in point.items():
        if key.startswith("train") and "loss" in key and value is not None:
            return key, value
    return None, None


def curve_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per learning-curve point.

    Columns: identity, ``at_step`` (the listed step, else the step reached), ``step``, ``epoch``,
    ``train_time_s``, the metrics and ``train_loss`` (with ``loss_name``).

    A record whose curve is a single point reached without a listed step (a memory bank fitted in one
    pass) is marked ``single_pass``. In a curve of separate runs, a record marked ``curve_run_steps`` is
    the point at that step, and a record of the same dataset and category without a curve (a model
    kept at its own schedule) is drawn as a reference, marked ``single_pass``.
    """
    rows = []
    run_curves = {(r.get("dataset"), r.get("category")) for r in records if r.get("curve_run_steps") is not None}
    for record in records:
        points = record.get("curve") or []
        if not points and not record.get("error") and (record.get("dataset"), record.get("category")) in run_curves:
            points = [_run_point(record)]
        single = len(points) == 1 and points[0].get("requested_step") is None
        for point in points:
            loss_name, loss = _loss(point)
            requested = point.get("requested_step")
            rows.append(
                {
                    "dataset": record.get("dataset"),
                    "category": record.get("category"),
                    "model": record.get("model"),
                    "seed": record.get("seed", 0),
                    **{k: v for k, v in point.items() if not k.startswith("train") or k == "train_time_s"},
                    "at_step": requested if requested is not None else point.get("step"),
                    "train_loss": loss,
                    "loss_name": loss_name,
                    "single_pass": single,
                }
            )
    return pd.DataFrame(rows)


def _run_point(record: dict[str, Any]) -> dict[str, Any]:
    """A whole run as a learning-curve point: its schedule, training time and test metrics."""
    metrics = {k: v for k, v in record.items() if k.startswith(("image_", "pixel_"))}
    return {
        "step": record.get("steps"),
        "requested_step": record.get("curve_run_steps"),
        "epoch": record.get("epochs"),
        "train_time_s": record.get("train_time_s"),
        **metrics,
    }


def curve_statistics(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every numeric column of :func:`curve_frame`, per model and ``at_step``."""
    if curves.empty:
        return curves
    keys = ["dataset", "category", "model", "at_step"]
    columns = [
        c
        for c in curves.columns
        if c not in {*keys, "seed", "requested_step", "loss_name", "single_pass"}
        and pd.to_numeric(curves[c], errors="coerce").notna().any()
    ]
    rows = []
    for key, group in curves.groupby(keys, sort=False):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for column in columns:
            values = pd.to_numeric(group[column], errors="coerce").dropna()
            row[f"{column}_mean"] = values.mean() if len(values) else np.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        row.update({"seeds": len(group), "single_pass": bool(group["single_pass"].all())})
        row["loss_name"] = next(iter(group["loss_name"].dropna()), None)
        rows.append(row)
    return pd.DataFrame(rows)
