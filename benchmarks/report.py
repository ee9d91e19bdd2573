"""Report of a run: CSV, markdown table, PNG charts and heat-map grids (matplotlib, Agg backend).

Everything is built from the result records alone (plus the heat-map arrays the workers saved),
so ``python -m benchmarks --report-only`` can redraw a finished run.

Files written into the run folder:

- ``results.csv``: every measured column, one row per model x dataset x category.
- ``results.md``: the summary table (accuracy, time, latency, memory, sizes, errors).
- ``accuracy_vs_latency_<dataset>.png``: image AUROC and AUPRO against OpenVINO f32 batch-1
  latency (torch eager where the export failed), mean over categories, one point per model.
- ``bar_<metric>.png``: one bar chart per metric, models side by side, one bar per category.
- ``heatmaps_<dataset>_<category>.png``: the same defective test images for every model, ground
  truth outlined, the model's anomaly map overlaid (each model's own normalised map, as
  anomalib's post-processor returns it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

ACCURACY = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPRO": "AUPRO (FPR 0.3)",
    "image_F1Score": "image F1",
}
# Column of the records -> header of the markdown table, with the number format.
SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "dataset": ("dataset", "{}"),
    "category": ("category", "{}"),
    "model": ("model", "{}"),
    "input_size": ("input px", "{:.0f}"),
    "image_AUROC": ("img AUROC", "{:.3f}"),
    "pixel_AUROC": ("px AUROC", "{:.3f}"),
    "pixel_AUPRO": ("AUPRO", "{:.3f}"),
    "image_F1Score": ("img F1", "{:.3f}"),
    "epochs": ("epochs", "{:.0f}"),
    "train_time_s": ("train s", "{:.1f}"),
    "torch_b1_latency_ms": ("torch b1 ms", "{:.1f}"),
    "ov_f32_b1_latency_ms": ("OV f32 b1 ms", "{:.1f}"),
    "ov_default_b1_latency_ms": ("OV default b1 ms", "{:.1f}"),
    "ov_f32_b8_throughput_ips": ("OV f32 b8 img/s", "{:.1f}"),
    "train_peak_mem_mb": ("train peak MiB", "{:.0f}"),
    "checkpoint_mb": ("ckpt MiB", "{:.1f}"),
    "openvino_bin_mb": ("OV .bin MiB", "{:.1f}"),
    "buffers_mb": ("buffers MiB", "{:.2f}"),
    "error": ("error", "{}"),
}
BAR_METRICS = {
    **ACCURACY,
    "train_time_s": "training time (s)",
    "torch_b1_latency_ms": "torch eager latency, batch 1 (ms)",
    "ov_f32_b1_latency_ms": "OpenVINO f32 latency, batch 1 (ms)",
    "ov_f32_b8_throughput_ips": "OpenVINO f32 throughput, batch 8 (img/s)",
    "train_peak_mem_mb": "training peak extra RSS (MiB)",
    "openvino_bin_mb": "OpenVINO .bin size (MiB)",
}
FIRST_COLUMNS = ["dataset", "category", "model", "profile", "error", "export_error"]


def records_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records as a table, identity columns first, in the order given."""
    frame = pd.DataFrame(list(records))
    for column in FIRST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    rest = [c for c in frame.columns if c not in FIRST_COLUMNS]
    return frame[FIRST_COLUMNS + rest]


def _format(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "{}":
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."
    try:
        return fmt.format(float(value))
    except (TypeError, ValueError):
        return str(value)


def markdown_table(frame: pd.DataFrame, columns: dict[str, tuple[str, str]] | None = None) -> str:
    """A GitHub markdown table of ``frame`` with the given ``{column: (header, format)}``."""
    columns = columns or SUMMARY_COLUMNS
    present = {k: v for k, v in columns.items() if k in frame.columns}
    if "error" in present and frame["error"].isna().all():
        present.pop("error")
    headers = [header for header, _ in present.values()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for _, row in frame.iterrows():
        cells = [_format(row.get(column), fmt) for column, (_, fmt) in present.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series([np.nan] * len(frame), index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.get_cmap("tab10")
    for axis, metric in zip(axes, ("image_AUROC", "pixel_AUPRO"), strict=True):
        for i, (model, row) in enumerate(means.iterrows()):
            if np.isnan(row[metric]):
                continue
            axis.scatter(row["latency"], row[metric], s=70, color=colors(i % 10), label=model)
            offset = (5, 5) if i % 2 == 0 else (5, -12)  # alternate sides so that close points stay readable
            axis.annotate(model, (row["latency"], row[metric]), textcoords="offset points", xytext=offset, fontsize=8)
        axis.set_xscale("log")
        axis.margins(x=0.2)
        axis.set_xlabel("CPU latency, batch 1 (ms, log; OpenVINO f32, torch where no export)")
        axis.set_ylabel(ACCURACY[metric])
        axis.set_ylim(-0.02, 1.02)
        axis.grid(visible=True, alpha=0.3)
    axes[0].set_title(f"{dataset}: image AUROC vs latency (mean over categories)")
    axes[1].set_title(f"{dataset}: AUPRO vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bar_chart(frame: pd.DataFrame, metric: str, label: str, path: Path) -> Path | None:
    """Grouped bars of ``metric``: models on the x axis, one bar per dataset/category."""
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


def heatmap_grid(frame: pd.DataFrame, dataset: str, category: str, path: Path) -> Path | None:
    """Grid of anomaly-map overlays: a row per model, a column per test image (same images for all)."""
    rows = frame[(frame["dataset"] == dataset) & (frame["category"] == category)]
    loaded = []
    for _, row in rows.iterrows():
        file = row.get("heatmaps")
        if isinstance(file, str) and Path(file).is_file():
            with np.load(file) as data:
                loaded.append((row["model"], {k: data[k] for k in data.files}))
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
        for j in range(min(columns, len(data["maps"]))):
            image = data["images"][j].astype(np.float32).transpose(1, 2, 0)
            axes[i][j].imshow(np.clip(image, 0, 1))
            axes[i][j].imshow(data["maps"][j].astype(np.float32), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i][j].contour(data["masks"][j], levels=[0.5], colors="white", linewidths=0.6)
            axes[i][j].set_title(f"score {float(data['scores'][j]):.2f}", fontsize=7)
        axes[i][0].set_ylabel(model, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(f"{dataset} / {category}: anomaly maps (jet, 0..1 after each model's normalisation)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(records: Sequence[dict[str, Any]], output: Path) -> dict[str, list[Path]]:
    """Write the CSV, markdown table and every chart of ``records`` into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    frame = records_frame(records)
    written: dict[str, list[Path]] = {"csv": [], "markdown": [], "charts": [], "heatmaps": []}
    csv = output / "results.csv"
    frame.to_csv(csv, index=False)
    written["csv"].append(csv)
    markdown = output / "results.md"
    markdown.write_text(markdown_table(frame))
    written["markdown"].append(markdown)
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
    "heatmaps_*.png",
    "bar_image_AUROC.png",
    "bar_pixel_AUPRO.png",
    "bar_train_time_s.png",
    "bar_ov_f32_b1_latency_ms.png",
)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def publish(records: Sequence[dict[str, Any]], output: Path, document: Path, images: Path) -> Path:
    """Copy the run's charts to ``images`` and put its table between the result markers of ``document``.

    The section between ``<!-- benchmark-results:start -->`` and ``<!-- benchmark-results:end -->``
    is replaced; the rest of the page is kept.
    """
    import json
    import shutil

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
    hardware = info.get("hardware", {})
    job_minutes = float(_numeric(frame, "wall_time_s").sum()) / 60
    versions = info.get("versions", {})
    link = Path(os.path.relpath(images.resolve(), document.resolve().parent)).as_posix()
    lines = [
        RESULTS_START,
        "",
        f"Run finished {info.get('finished_at', '?')}; the jobs' own times add up to {job_minutes:.1f} min "
        f"(the last invocation of the command took {float(info.get('wall_time_s') or 0) / 60:.1f} min), on "
        f"{hardware.get('cpu', '?')} "
        f"({hardware.get('cores_available', '?')} cores, {hardware.get('ram_gib', '?')} GiB RAM, shared with other "
        f"jobs), {info.get('torch_threads', '?')} thread(s) per job, seed {info.get('seed', '?')}; torch "
        f"{versions.get('torch')}, anomalib {versions.get('anomalib')}, OpenVINO {versions.get('openvino')}, timm "
        f"{versions.get('timm')}; commit `{str(info.get('git_commit') or '?')[:10]}`.",
        "",
        markdown_table(frame),
    ]
    problems = []
    partial_columns = [column for column in frame.columns if column.endswith("_error") and column != "error"]
    for _, row in frame.iterrows():
        if isinstance(row.get("error"), str):
            problems.append(f"- {row['model']} on {row['category']}: failed, `{_short(row['error'])}`")
        partial = {c: row[c] for c in partial_columns if isinstance(row[c], str)}
        problems.extend(
            f"- {row['model']} on {row['category']}: `{column}`: `{_short(message)}` (its other numbers stand)"
            for column, message in partial.items()
        )
    if problems:
        lines.append("Failures recorded by the harness (the run went on):\n")
        lines.extend([*problems, ""])
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
