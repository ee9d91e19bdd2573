"""Report of a run: CSV, markdown tables, PNG charts and heat-map grids (matplotlib, Agg backend).

Everything is built from the result records alone (plus the heat-map arrays the workers saved),
so ``python -m benchmarks --report-only`` can redraw a finished run. Statistics over seeds and
categories come from :mod:`benchmarks.aggregate`.

Files written into the run folder:

- ``results.csv``: every measured column, one row per job (model x dataset x category x seed).
- ``summary.csv``: mean and standard deviation over seeds per dataset x category x model;
  ``summary_datasets.csv``: per dataset x model, the per-seed mean over categories, then its mean
  and standard deviation over seeds.
- ``results.md``: per dataset, a summary table (mean over categories, ``mean ± std`` over seeds)
  and the per-category table; the failures.
- ``which_model.md``: the README's "Which model?" table (one row per model).
- ``curves.md``, ``curves.csv`` and ``curve_<dataset>_<category>.png`` in the learning-curve mode:
  metric against optimiser steps, one line per model (mean over seeds, band of one std).
- ``accuracy_vs_latency_<dataset>.png``: image AUROC and AUPRO against OpenVINO f32 batch-1
  latency (torch eager where the export failed), mean over categories and seeds, one point per model.
- ``bar_<metric>.png``: one bar chart per metric, models side by side, one bar per category.
- ``heatmaps_<dataset>_<category>.png``: the same defective test images for every model (its lowest
  seed), ground truth outlined, the model's anomaly map overlaid; maps are raw scores, so each model's
  maps are scaled to [0, 1] together (one range per model, shared by its images).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmarks.aggregate import (
    category_statistics,
    curve_frame,
    curve_statistics,
    dataset_statistics,
    records_frame,
)

__all__ = ["markdown_table", "publish", "records_frame", "write_report"]

#: Accuracy columns of the records -> short header.
ACCURACY = {
    "image_AUROC": "img AUROC",
    "image_F1Max": "img F1max",
    "image_AUPR": "img AP",
    "pixel_AUROC": "px AUROC",
    "pixel_F1Max": "px F1max",
    "pixel_AUPR": "px AP",
    "pixel_AUPRO": "AUPRO",
    "image_F1Score": "img F1 (thr.)",
    "pixel_F1Score": "px F1 (thr.)",
}
LONG_NAMES = {
    "image_AUROC": "image AUROC",
    "image_F1Max": "image F1-max",
    "image_AUPR": "image AP",
    "pixel_AUROC": "pixel AUROC",
    "pixel_F1Max": "pixel F1-max",
    "pixel_AUPR": "pixel AP",
    "pixel_AUPRO": "AUPRO (FPR 0.3)",
    "image_F1Score": "image F1 (post-processor threshold)",
    "pixel_F1Score": "pixel F1 (post-processor threshold)",
}
# Column of the records -> (header, number format) in the markdown tables (mean ± std over seeds).
SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "input_size": ("input px", "{:.0f}"),
    **{column: (header, "{:.3f}") for column, header in ACCURACY.items()},
    "train_time_s": ("train s", "{:.1f}"),
    "ov_f32_b1_latency_ms": ("OV f32 b1 ms", "{:.1f}"),
}
CATEGORY_COLUMNS: dict[str, tuple[str, str]] = {
    "input_size": ("input px", "{:.0f}"),
    "train_images": ("train imgs", "{:.0f}"),
    "epochs": ("epochs", "{:.0f}"),
    "steps": ("steps", "{:.0f}"),
    **{column: (header, "{:.3f}") for column, header in ACCURACY.items()},
    "train_time_s": ("train s", "{:.1f}"),
    "train_cpu_s": ("train CPU s", "{:.1f}"),
    "torch_b1_latency_ms": ("torch b1 ms", "{:.1f}"),
    "ov_f32_b1_latency_ms": ("OV f32 b1 ms", "{:.1f}"),
    "ov_default_b1_latency_ms": ("OV default b1 ms", "{:.1f}"),
    "ov_f32_b8_throughput_ips": ("OV f32 b8 img/s", "{:.1f}"),
    "ov_f32_image_AUROC": ("OV f32 img AUROC", "{:.3f}"),
    "ov_fp16_b1_latency_ms": ("OV fp16 b1 ms", "{:.1f}"),
    "ov_fp16_image_AUROC": ("OV fp16 img AUROC", "{:.3f}"),
    "ov_int8_b1_latency_ms": ("OV int8 b1 ms", "{:.1f}"),
    "ov_int8_image_AUROC": ("OV int8 img AUROC", "{:.3f}"),
    "train_peak_mem_mb": ("train peak MiB", "{:.0f}"),
    "checkpoint_mb": ("ckpt MiB", "{:.1f}"),
    "openvino_bin_mb": ("OV .bin MiB", "{:.1f}"),
    "buffers_mb": ("buffers MiB", "{:.2f}"),
}
BAR_METRICS = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPRO": "AUPRO (FPR 0.3)",
    "image_F1Max": "image F1-max",
    "train_time_s": "training time (s)",
    "torch_b1_latency_ms": "torch eager latency, batch 1 (ms)",
    "ov_f32_b1_latency_ms": "OpenVINO f32 latency, batch 1 (ms)",
    "ov_f32_b8_throughput_ips": "OpenVINO f32 throughput, batch 8 (img/s)",
    "train_peak_mem_mb": "training peak extra RSS (MiB)",
    "openvino_bin_mb": "OpenVINO .bin size (MiB)",
}
#: The README's "Which model?" table: (dataset, category or None for the mean over categories, metric, header).
WHICH_MODEL = (
    ("ELPV", "mono", "image_AUROC", "ELPV mono img AUROC"),
    ("ELPV", "poly", "image_AUROC", "ELPV poly img AUROC"),
    ("DemoTextures", None, "image_AUROC", "DemoTextures img AUROC"),
    ("DemoTextures", None, "pixel_AUROC", "DemoTextures px AUROC"),
    ("DemoTextures", None, "pixel_AUPRO", "DemoTextures AUPRO"),
)
CURVE_PLOTS = {"image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC", "pixel_AUPRO": "AUPRO (FPR 0.3)"}
CURVE_COLUMNS: dict[str, tuple[str, str]] = {
    "epoch": ("epoch", "{:.1f}"),
    "train_time_s": ("train s", "{:.1f}"),
    "image_AUROC": ("img AUROC", "{:.3f}"),
    "pixel_AUROC": ("px AUROC", "{:.3f}"),
    "pixel_AUPRO": ("AUPRO", "{:.3f}"),
    "train_loss": ("train loss", "{:.4g}"),
}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format(value: Any, fmt: str) -> str:
    if _missing(value):
        return "-"
    if fmt == "{}":
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."
    try:
        return fmt.format(float(value))
    except (TypeError, ValueError):
        return str(value)


#: Columns that describe a job rather than measure it: the tables show their mean without a spread.
DESCRIPTIVE = {
    "input_size",
    "train_images",
    "epoch",
    "epochs",
    "steps",
    "checkpoint_mb",
    "openvino_bin_mb",
    "buffers_mb",
}


def mean_std(mean: Any, std: Any, fmt: str) -> str:
    """``0.953 ± 0.004``; the mean alone when the std is undefined (one seed); ``-`` when missing."""
    if _missing(mean):
        return "-"
    if _missing(std):
        return _format(mean, fmt)
    return f"{_format(mean, fmt)} ± {_format(std, fmt)}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown_table(frame: pd.DataFrame, columns: dict[str, tuple[str, str]]) -> str:
    """A GitHub markdown table of ``frame`` (one row per row) with ``{column: (header, format)}``.

    Columns missing from ``frame`` or empty in every row are left out.
    """
    present = {k: v for k, v in columns.items() if k in frame.columns and frame[k].notna().any()}
    headers = [header for header, _ in present.values()]
    rows = [[_format(row.get(column), fmt) for column, (_, fmt) in present.items()] for _, row in frame.iterrows()]
    return _table(headers, rows)


def statistics_table(
    stats: pd.DataFrame, identity: dict[str, str], columns: dict[str, tuple[str, str]], extra: dict[str, str]
) -> str:
    """Markdown of ``<column>_mean``/``_std`` pairs as ``mean ± std``; empty columns are left out.

    ``identity`` and ``extra`` map plain columns of ``stats`` to headers (before and after the numbers).
    """
    present = {
        column: spec
        for column, spec in columns.items()
        if f"{column}_mean" in stats.columns and stats[f"{column}_mean"].notna().any()
    }
    extra = {k: v for k, v in extra.items() if k in stats.columns and stats[k].notna().any()}
    headers = [*identity.values(), *(h for h, _ in present.values()), *extra.values()]
    rows = []
    for _, row in stats.iterrows():
        cells = [_format(row[c], "{}") for c in identity]
        cells += [
            mean_std(row[f"{c}_mean"], None if c in DESCRIPTIVE else row.get(f"{c}_std"), fmt)
            for c, (_, fmt) in present.items()
        ]
        cells += [_format(row[c], "{}") for c in extra]
        rows.append(cells)
    return _table(headers, rows)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([np.nan] * len(frame), index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _seeds_text(frame: pd.DataFrame) -> str:
    seeds = sorted({int(s) for s in frame["seed"].dropna()})
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def _cap_text(frame: pd.DataFrame) -> str:
    caps = sorted({int(c) for c in _numeric(frame, "max_train_images").dropna()})
    if not caps:
        return "all training images"
    capped = ", ".join(map(str, caps))
    return f"training images capped at {capped} per category (a random subset drawn with the job's seed)"


def results_markdown(frame: pd.DataFrame) -> str:
    """Per dataset: the summary over categories, then the per-category table; then the failures."""
    parts = []
    for dataset in dict.fromkeys(frame["dataset"].dropna()):
        rows = frame[frame["dataset"] == dataset]
        categories = list(dict.fromkeys(rows["category"].dropna()))
        summary = dataset_statistics(rows)
        per_category = category_statistics(rows)
        parts.append(f"### {dataset}\n")
        parts.append(
            f"Mean over {len(categories)} {'category' if len(categories) == 1 else 'categories'} "
            f"({', '.join(categories)}), {_seeds_text(rows)}, "
            f"{_cap_text(rows)}: the mean over categories is taken per seed, then `mean ± std` over seeds.\n"
        )
        parts.append(statistics_table(summary, {"model": "model"}, SUMMARY_COLUMNS, {"seeds": "seeds"}))
        parts.append(f"Per category ({dataset}; `mean ± std` over seeds):\n")
        parts.append(
            statistics_table(
                per_category,
                {"category": "category", "model": "model"},
                CATEGORY_COLUMNS,
                {"seeds": "seeds", "failed": "failed"},
            )
        )
    failures = failure_lines(frame)
    if failures:
        parts.append("Failures recorded by the harness (the run went on):\n")
        parts.append("\n".join(failures) + "\n")
    return "\n".join(parts)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_lines(frame: pd.DataFrame) -> list[str]:
    """One markdown bullet per failed job and per partial failure (``*_error`` columns)."""
    lines = []
    partial_columns = [column for column in frame.columns if column.endswith("_error") and column != "error"]
    for _, row in frame.iterrows():
        where = f"{row['model']} on {row['dataset']}/{row['category']} seed {row.get('seed', 0)}"
        if isinstance(row.get("error"), str):
            lines.append(f"- {where}: failed, `{_short(row['error'])}`")
        partial = {c: row[c] for c in partial_columns if isinstance(row[c], str)}
        lines.extend(f"- {where}: `{c}`: `{_short(m)}` (its other numbers stand)" for c, m in partial.items())
    return lines


def which_model_markdown(frame: pd.DataFrame) -> str:
    """The README's "Which model?" table: one row per model (see :data:`WHICH_MODEL`).

    Training time is the model's mean on the dataset category of the run with the most training
    images (named in the header); latency is the OpenVINO f32 batch-1 median, mean over its jobs.
    """
    ok = frame[frame["error"].isna()]
    by_category = category_statistics(ok, ["image_AUROC", "pixel_AUROC", "pixel_AUPRO", "train_time_s"])
    by_dataset = dataset_statistics(frame, ["image_AUROC", "pixel_AUROC", "pixel_AUPRO"])
    sizes = ok.assign(n=_numeric(ok, "train_images")).groupby(["dataset", "category"], sort=False)["n"].median()
    largest = sizes.idxmax() if sizes.notna().any() else None
    train_header = f"train s ({largest[0]} {largest[1]}, {sizes[largest]:.0f} imgs)" if largest else "train s"
    headers = ["model", "input px", *(h for *_, h in WHICH_MODEL), train_header, "OV f32 b1 ms"]
    rows = []
    for model in dict.fromkeys(frame["model"].dropna()):
        jobs = ok[ok["model"] == model]
        cells = [str(model), _format(_numeric(jobs, "input_size").median(), "{:.0f}")]
        for dataset, category, metric, _ in WHICH_MODEL:
            if category is None:
                match = by_dataset[(by_dataset["dataset"] == dataset) & (by_dataset["model"] == model)]
            else:
                match = by_category[
                    (by_category["dataset"] == dataset)
                    & (by_category["category"] == category)
                    & (by_category["model"] == model)
                ]
            row = match.iloc[0] if len(match) else {}
            cells.append(mean_std(row.get(f"{metric}_mean"), row.get(f"{metric}_std"), "{:.3f}"))
        train = by_category[
            (by_category["model"] == model)
            & (by_category["dataset"] == (largest[0] if largest else None))
            & (by_category["category"] == (largest[1] if largest else None))
        ]
        cells.append(_format(train["train_time_s_mean"].iloc[0] if len(train) else None, "{:.0f}"))
        cells.append(_format(_numeric(jobs, "ov_f32_b1_latency_ms").mean(), "{:.1f}"))
        rows.append(cells)
    return _table(headers, rows)


def curves_markdown(stats: pd.DataFrame) -> str:
    """Per dataset/category: a table of the learning curves (model, step, metrics ``mean ± std``)."""
    parts = []
    for (dataset, category), rows in stats.groupby(["dataset", "category"], sort=False):
        parts.append(f"#### {dataset} / {category}\n")
        parts.append(
            statistics_table(
                rows.assign(step=rows["at_step"].astype(int)),
                {"model": "model", "step": "step"},
                CURVE_COLUMNS,
                {"loss_name": "loss", "seeds": "seeds"},
            )
        )
    return "\n".join(parts)


def curve_chart(stats: pd.DataFrame, dataset: str, category: str, path: Path) -> Path | None:
    """Metrics (and the training loss) against optimiser steps, one line per model, band of one std.

    A model fitted in one pass (a memory bank), or kept at its own schedule beside a curve of separate
    runs, is drawn as a dashed horizontal line at its value.
    """
    rows = stats[(stats["dataset"] == dataset) & (stats["category"] == category)]
    metrics = [m for m in CURVE_PLOTS if f"{m}_mean" in rows and rows[f"{m}_mean"].notna().any()]
    has_loss = "train_loss_mean" in rows and rows["train_loss_mean"].notna().any()
    panels = metrics + (["train_loss"] if has_loss else [])
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    models = list(dict.fromkeys(rows["model"]))
    for axis, metric in zip(axes[0], panels, strict=True):
        for i, model in enumerate(models):
            line = rows[rows["model"] == model]
            mean = line[f"{metric}_mean"].to_numpy(dtype=float)
            std = line[f"{metric}_std"].fillna(0).to_numpy(dtype=float)
            steps = line["at_step"].to_numpy(dtype=float)
            if np.isnan(mean).all():
                continue
            color = colors(i % 10)
            if bool(line["single_pass"].all()):
                if metric != "train_loss":
                    epochs = line["epoch_mean"].max() if "epoch_mean" in line else 1
                    label = f"{model} ({'own schedule' if epochs > 1 else 'one pass'})"
                    axis.axhline(mean[0], color=color, linestyle="--", linewidth=1, label=label)
                continue
            axis.plot(steps, mean, marker="o", markersize=3, color=color, label=model)
            axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        axis.set_xlabel("optimiser steps")
        axis.set_title(CURVE_PLOTS.get(metric, "training loss (as logged)"), fontsize=9)
        if metric == "train_loss":
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(mpl.ticker.ScalarFormatter())
            axis.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())
        axis.grid(visible=True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{dataset} / {category}: learning curves on the test set (for choosing schedules)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_latency(frame: pd.DataFrame, dataset: str, path: Path) -> Path | None:
    """Scatter of image AUROC and AUPRO against batch-1 CPU latency, one point per model."""
    rows = frame[frame["dataset"] == dataset].copy()
    rows["latency"] = _numeric(rows, "ov_f32_b1_latency_ms").fillna(_numeric(rows, "torch_b1_latency_ms"))
    rows["image_AUROC"] = _numeric(rows, "image_AUROC")
    rows["pixel_AUPRO"] = _numeric(rows, "pixel_AUPRO")
    means = (
        rows.groupby("model", sort=False)[["latency", "image_AUROC", "pixel_AUPRO"]].mean().dropna(subset=["latency"])
    )
    if means.empty:
        return None
    metrics = [m for m in ("image_AUROC", "pixel_AUPRO") if means[m].notna().any()]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    colors = plt.get_cmap("tab10")
    for axis, metric in zip(axes[0], metrics, strict=True):
        for i, (model, row) in enumerate(means.iterrows()):
            if np.isnan(row[metric]):
                continue
            axis.scatter(row["latency"], row[metric], s=70, color=colors(i % 10), label=model)
            offset = (5, 5) if i % 2 == 0 else (5, -12)  # alternate sides so that close points stay readable
            axis.annotate(model, (row["latency"], row[metric]), textcoords="offset points", xytext=offset, fontsize=8)
        axis.set_xscale("log")
        axis.margins(x=0.2)
        axis.set_xlabel("CPU latency, batch 1 (ms, log; OpenVINO f32, torch where no export)")
        axis.set_ylabel(LONG_NAMES[metric])
        axis.set_ylim(-0.02, 1.02)
        axis.grid(visible=True, alpha=0.3)
        axis.set_title(f"{dataset}: {LONG_NAMES[metric]} vs latency (mean over categories)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bar_chart(frame: pd.DataFrame, metric: str, label: str, path: Path) -> Path | None:
    """Grouped bars of ``metric`` (mean over seeds): models on the x axis, one bar per dataset/category."""
    values = _numeric(frame, metric)
    if values.isna().all():
        return None
    rows = frame.assign(value=values, group=frame["dataset"].astype(str) + "/" + frame["category"].astype(str))
    table = rows.pivot_table(index="model", columns="group", values="value", sort=False)
    table = table.reindex([m for m in dict.fromkeys(frame["model"]) if m in table.index])
    fig, axis = plt.subplots(figsize=(max(6, 1.1 * len(table) + 2), 4))
    width = 0.8 / max(1, len(table.columns))
    x = np.arange(len(table))
    for j, group in enumerate(table.columns):
        axis.bar(x + j * width - 0.4 + width / 2, table[group].to_numpy(), width, label=group)
    axis.set_xticks(x, table.index, rotation=30, ha="right")
    axis.set_ylabel(label)
    axis.set_title(label)
    if metric in ACCURACY:
        axis.set_ylim(0, 1.05)
    axis.grid(visible=True, axis="y", alpha=0.3)
    if len(table.columns) > 1:
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _unit_range(maps: np.ndarray) -> np.ndarray:
    """Maps scaled to [0, 1] together (the 1st and 99.9th percentiles of all of them as the range)."""
    low, high = np.nanpercentile(maps, [1, 99.9])
    return np.clip((maps - low) / (high - low), 0, 1) if high > low else np.zeros_like(maps)


def heatmap_grid(frame: pd.DataFrame, dataset: str, category: str, path: Path) -> Path | None:
    """Grid of anomaly-map overlays: a row per model (its lowest seed), a column per test image (same for all)."""
    rows = frame[(frame["dataset"] == dataset) & (frame["category"] == category)]
    rows = rows.sort_values("seed", kind="stable").drop_duplicates("model")
    loaded, without_maps = [], []
    for _, row in rows.iterrows():
        file = row.get("heatmaps")
        if isinstance(file, str) and Path(file).is_file():
            with np.load(file) as data:
                loaded.append((row["model"], {k: data[k] for k in data.files}))
        elif pd.isna(row.get("error")):  # a record reused from another folder (--reuse-records): no arrays here
            without_maps.append(str(row["model"]))
    if not loaded:
        return None
    reference = loaded[0][1]
    columns = len(reference["images"])
    fig, axes = plt.subplots(
        len(loaded) + 1, columns, figsize=(1.9 * columns + 0.8, 1.9 * (len(loaded) + 1)), squeeze=False
    )
    for j in range(columns):
        image = reference["images"][j].astype(np.float32).transpose(1, 2, 0)
        axes[0][j].imshow(np.clip(image, 0, 1))
        axes[0][j].contour(reference["masks"][j], levels=[0.5], colors="lime", linewidths=0.8)
    axes[0][0].set_ylabel("input + GT", fontsize=8)
    for i, (model, data) in enumerate(loaded, start=1):
        maps = _unit_range(data["maps"].astype(np.float32))
        for j in range(min(columns, len(maps))):
            image = data["images"][j].astype(np.float32).transpose(1, 2, 0)
            axes[i][j].imshow(np.clip(image, 0, 1))
            axes[i][j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i][j].contour(data["masks"][j], levels=[0.5], colors="white", linewidths=0.6)
            axes[i][j].set_title(f"score {float(data['scores'][j]):.3g}", fontsize=7)
        axes[i][0].set_ylabel(model, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    title = f"{dataset} / {category}: anomaly maps (jet; each model's maps scaled together)"
    if without_maps:
        title += f"\nno maps in this run folder for {', '.join(without_maps)} (records reused from elsewhere)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(records: Sequence[dict[str, Any]], output: Path) -> dict[str, list[Path]]:
    """Write the CSVs, markdown tables and every chart of ``records`` into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    frame = records_frame(records)
    written: dict[str, list[Path]] = {"csv": [], "markdown": [], "charts": [], "heatmaps": [], "curves": []}
    for name, table in (
        ("results.csv", frame),
        ("summary.csv", category_statistics(frame)),
        ("summary_datasets.csv", dataset_statistics(frame)),
    ):
        table.to_csv(output / name, index=False)
        written["csv"].append(output / name)
    markdown = output / "results.md"
    markdown.write_text(f"# Benchmark results\n\n{results_markdown(frame)}")
    written["markdown"].append(markdown)
    which = output / "which_model.md"
    which.write_text(which_model_markdown(frame))
    written["markdown"].append(which)
    curves = curve_frame(records)
    if not curves.empty:
        stats = curve_statistics(curves)
        curves.to_csv(output / "curves.csv", index=False)
        (output / "curves.md").write_text(curves_markdown(stats))
        written["markdown"].append(output / "curves.md")
        for dataset, category in stats[["dataset", "category"]].drop_duplicates().itertuples(index=False):
            chart = curve_chart(stats, dataset, category, output / f"curve_{_slug(dataset)}_{_slug(category)}.png")
            if chart:
                written["curves"].append(chart)
    for dataset in dict.fromkeys(frame["dataset"].dropna()):
        chart = accuracy_vs_latency(frame, dataset, output / f"accuracy_vs_latency_{_slug(dataset)}.png")
        if chart:
            written["charts"].append(chart)
    for metric, label in BAR_METRICS.items():
        chart = bar_chart(frame, metric, label, output / f"bar_{metric}.png")
        if chart:
            written["charts"].append(chart)
    if "heatmaps" in frame.columns:
        pairs = frame[["dataset", "category"]].drop_duplicates().itertuples(index=False)
        for dataset, category in pairs:
            grid = heatmap_grid(frame, dataset, category, output / f"heatmaps_{_slug(dataset)}_{_slug(category)}.png")
            if grid:
                written["heatmaps"].append(grid)
    return written


RESULTS_START = "<!-- benchmark-results:start -->"
RESULTS_END = "<!-- benchmark-results:end -->"
PUBLISHED_CHARTS = (
    "accuracy_vs_latency_*.png",
    "curve_*.png",
    "heatmaps_*.png",
    "bar_image_AUROC.png",
    "bar_pixel_AUPRO.png",
    "bar_train_time_s.png",
    "bar_ov_f32_b1_latency_ms.png",
)


def run_line(frame: pd.DataFrame, info: dict[str, Any]) -> str:
    """One sentence: when, how long, on what, with which seeds, versions and commit."""
    hardware = info.get("hardware", {})
    versions = info.get("versions", {})
    job_minutes = float(_numeric(frame, "wall_time_s").sum()) / 60
    others, steal = _numeric(frame, "others_cpu_s"), _numeric(frame, "steal_s")
    if others.notna().any():
        measured = f"{int(others.notna().sum())} of {len(frame)} jobs"
        share = (
            f"while the jobs ran, other processes used {others.sum() / 60:.1f} CPU-min and the hypervisor "
            f"withheld {steal.sum() / 60:.1f} min (steal; measured for {measured})"
        )
    else:
        share = "the machine's other load was not recorded"
    # the CPU features that decide OpenVINO's kernels (recorded since 2026-12-07; "avx2" alone: no VNNI)
    flags = f"{' '.join(hardware['cpu_flags']) or 'no AVX2'}; " if "cpu_flags" in hardware else ""
    return (
        f"Run finished {info.get('finished_at', '?')}; the jobs' own times add up to {job_minutes:.1f} min "
        f"(the last invocation of the command took {float(info.get('wall_time_s') or 0) / 60:.1f} min), on "
        f"{hardware.get('cpu', '?')} ({flags}{hardware.get('cores_available', '?')} cores, "
        f"{hardware.get('ram_gib', '?')} GiB RAM; {share}), {info.get('torch_threads', '?')} "
        f"thread(s) per job, {_seeds_text(frame)}; torch {versions.get('torch')}, anomalib "
        f"{versions.get('anomalib')}, OpenVINO {versions.get('openvino')}, timm {versions.get('timm')}; commit "
        f"`{str(info.get('git_commit') or '?')[:10]}`. Command: `{info.get('command', '?')}`."
    )


def publish(records: Sequence[dict[str, Any]], output: Path, document: Path, images: Path) -> Path:
    """Copy the run's charts to ``images`` and put its tables between the result markers of ``document``.

    The section between ``<!-- benchmark-results:start -->`` and ``<!-- benchmark-results:end -->``
    is replaced (run line, per-dataset summary and per-category tables, the "Which model?" table,
    failures, learning curves when the run has them, charts); the rest of the page is kept.
    """
    output, document, images = Path(output), Path(document), Path(images)
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):
        old.unlink()
    copied = []
    for pattern in PUBLISHED_CHARTS:
        for chart in sorted(output.glob(pattern)):
            shutil.copy2(chart, images / chart.name)
            copied.append(chart.name)
    info = json.loads((output / "run.json").read_text()) if (output / "run.json").is_file() else {}
    frame = records_frame(records)
    link = Path(os.path.relpath(images.resolve(), document.resolve().parent)).as_posix()
    lines = [RESULTS_START, "", run_line(frame, info), "", results_markdown(frame)]
    lines += ["### Which model?", "", which_model_markdown(frame)]
    curves = curve_frame(records)
    if not curves.empty:
        lines += ["### Learning curves (test set, for choosing schedule lengths only)", ""]
        lines.append(curves_markdown(curve_statistics(curves)))
    for name in copied:
        lines.extend([f"![{name[:-4]}]({link}/{name})", ""])
    lines.append(RESULTS_END)
    section = "\n".join(lines)
    text = document.read_text()
    if RESULTS_START in text and RESULTS_END in text:
        head, _, rest = text.partition(RESULTS_START)
        _, _, tail = rest.partition(RESULTS_END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    document.write_text(text)
    return document
