"""Report of the benchmark harness from fake records: statistics over seeds, tables, charts, publishing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.aggregate import category_statistics, curve_frame, curve_statistics, dataset_statistics
from benchmarks.report import markdown_table, mean_std, records_frame, run_line, write_report

# image AUROC by (model, category, seed): per-seed category means of Padim are 0.70 and 0.80.
AUROC = {
    ("Padim", "brick", 0): 0.8,
    ("Padim", "grass", 0): 0.6,
    ("Padim", "brick", 1): 0.9,
    ("Padim", "grass", 1): 0.7,
    ("MLDFR", "brick", 0): 0.95,
    ("MLDFR", "grass", 0): 0.85,
    ("MLDFR", "brick", 1): 0.97,
    ("MLDFR", "grass", 1): 0.87,
}


def _heatmaps(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "maps.npz"
    np.savez_compressed(
        path,
        images=rng.random((3, 3, 16, 16)).astype(np.float16),
        masks=(rng.random((3, 16, 16)) > 0.8).astype(np.uint8),
        maps=rng.random((3, 16, 16)).astype(np.float32) * 900,  # raw scores: the grid scales them
        scores=rng.random(3),
        paths=np.array(["a.png", "b.png", "c.png"]),
    )
    return path


def fake_records(tmp_path: Path) -> list[dict]:
    heatmaps = _heatmaps(tmp_path)
    records = []
    for (model, category, seed), auroc in AUROC.items():
        records.append(
            {
                "model": model,
                "dataset": "DemoTextures",
                "category": category,
                "seed": seed,
                "profile": "cpu",
                "error": None,
                "input_size": 256,
                "train_images": 40,
                "epochs": 1 if model == "Padim" else 10,
                "image_AUROC": auroc,
                "image_F1Max": 0.8,
                "image_AUPR": 0.9,
                "pixel_AUROC": 0.9,
                "pixel_AUPRO": 0.7 + 0.01 * seed,
                "image_F1Score": None,
                "train_time_s": 12.0 + seed,
                "torch_b1_latency_ms": 40.0,
                "ov_f32_b1_latency_ms": 10.0 if model == "Padim" else 20.0,
                "ov_f32_b8_throughput_ips": 100.0,
                "openvino_bin_mb": 3.0,
                "heatmaps": str(heatmaps),
                "wall_time_s": 30.0,
            }
        )
    records.extend(
        {
            "model": model,
            "dataset": "ELPV",
            "category": category,
            "seed": 0,
            "error": None,
            "input_size": 256,
            "train_images": train_images,
            "max_train_images": None,
            "image_AUROC": 0.94 if category == "mono" else 0.88,
            "pixel_AUROC": None,
            "pixel_AUPRO": None,
            "train_time_s": 50.0 if model == "Padim" else 300.0,
            "ov_f32_b1_latency_ms": 10.0,
        }
        for category, train_images in (("mono", 441), ("poly", 690))
        for model in ("Padim", "MLDFR")
    )
    records.append(
        {"model": "Broken", "dataset": "DemoTextures", "category": "brick", "seed": 0, "error": "RuntimeError: x|y"}
    )
    return records


def test_category_statistics_are_mean_and_sample_std_over_seeds(tmp_path: Path):
    stats = category_statistics(records_frame(fake_records(tmp_path)))
    padim = stats[(stats["model"] == "Padim") & (stats["category"] == "brick") & (stats["dataset"] == "DemoTextures")]
    assert padim["image_AUROC_mean"].item() == pytest.approx(0.85)
    assert padim["image_AUROC_std"].item() == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert padim["seeds"].item() == 2
    elpv = stats[(stats["dataset"] == "ELPV") & (stats["model"] == "Padim") & (stats["category"] == "mono")]
    assert math.isnan(elpv["image_AUROC_std"].item())  # one seed: no spread
    broken = stats[stats["model"] == "Broken"]
    assert (broken["seeds"].item(), broken["failed"].item()) == (0, 1)


def test_dataset_means_are_taken_per_seed_then_over_seeds(tmp_path: Path):
    stats = dataset_statistics(records_frame(fake_records(tmp_path)))
    padim = stats[(stats["dataset"] == "DemoTextures") & (stats["model"] == "Padim")]
    assert padim["image_AUROC_mean"].item() == pytest.approx(0.75)
    # the spread of the per-seed means (0.70, 0.80), not of the four category values
    assert padim["image_AUROC_std"].item() == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert (padim["seeds"].item(), padim["categories"].item()) == (2, 2)


def test_a_seed_missing_a_category_is_left_out_of_the_dataset_mean(tmp_path: Path):
    records = fake_records(tmp_path)
    records.append({**records[0], "seed": 2, "image_AUROC": 0.0})  # seed 2 finished brick only
    records.append({**records[1], "seed": 2, "error": "RuntimeError: boom", "image_AUROC": None})
    stats = dataset_statistics(records_frame(records))
    padim = stats[(stats["dataset"] == "DemoTextures") & (stats["model"] == "Padim")]
    assert padim["image_AUROC_mean"].item() == pytest.approx(0.75)
    assert (padim["seeds"].item(), padim["incomplete_seeds"].item()) == (2, 1)


def test_report_writes_csvs_markdown_which_model_charts_and_heatmaps(tmp_path: Path):
    written = write_report(fake_records(tmp_path), tmp_path / "out")
    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 13
    assert list(table.columns[:4]) == ["dataset", "category", "model", "seed"]
    assert len(pd.read_csv(out / "summary.csv")) == 9  # DemoTextures 2 + 2 + Broken 1, ELPV 4
    assert len(pd.read_csv(out / "summary_datasets.csv")) == 5
    markdown = (out / "results.md").read_text()
    demo, elpv = markdown.split("### ELPV")
    assert "| Padim | 256 | 0.750 ± 0.071 | 0.800 ± 0.000 | 0.900 ± 0.000 | 0.900 ± 0.000 |" in demo
    assert "| brick | Padim | 256 | 40 | 1 | 0.850 ± 0.071 |" in demo
    assert "img F1 (thr.)" not in markdown  # empty in every row: left out
    assert "px AUROC" not in elpv.split("Failures")[0]  # ELPV has no masks: no pixel columns
    assert "Broken on DemoTextures/brick seed 0: failed, `RuntimeError: x|y`" in markdown
    which = (out / "which_model.md").read_text()
    assert which.splitlines()[0] == (
        "| model | input px | ELPV mono img AUROC | ELPV poly img AUROC | DemoTextures img AUROC | "
        "DemoTextures px AUROC | DemoTextures AUPRO | train s (ELPV poly, 690 imgs) | OV f32 b1 ms |"
    )
    assert "| Padim | 256 | 0.940 | 0.880 | 0.750 ± 0.071 | 0.900 ± 0.000 | 0.705 ± 0.007 | 50 | 10.0 |" in which
    assert (out / "accuracy_vs_latency_DemoTextures.png").stat().st_size > 1000
    assert (out / "accuracy_vs_latency_ELPV.png").is_file()
    assert (out / "bar_image_AUROC.png").is_file()
    assert (out / "heatmaps_DemoTextures_brick.png").is_file()
    assert len(written["heatmaps"]) == 2  # ELPV records carry no heat maps here
    for path in written["charts"]:
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_mean_std_formats_and_markdown_marks_missing_numbers():
    assert mean_std(0.9531, 0.0042, "{:.3f}") == "0.953 ± 0.004"
    assert mean_std(0.9531, float("nan"), "{:.3f}") == "0.953"
    assert mean_std(None, None, "{:.3f}") == "-"
    frame = records_frame([{"model": "A", "dataset": "D", "category": "c", "image_AUROC": None, "x": 1.0}])
    markdown = markdown_table(frame, {"model": ("model", "{}"), "image_AUROC": ("img", "{:.3f}"), "x": ("x", "{}")})
    assert markdown.splitlines()[0] == "| model | x |"


def test_report_of_only_failures_still_writes_the_tables(tmp_path: Path):
    records = [{"model": "A", "dataset": "D", "category": "c", "seed": 0, "error": "boom"}]
    written = write_report(records, tmp_path)
    assert written["charts"] == []
    assert "boom" in (tmp_path / "results.md").read_text()


def _curve_records() -> list[dict]:
    records = []
    for seed in (0, 1):
        points = [
            {"step": step, "requested_step": step, "epoch": step / 10, "train_time_s": step * 0.1 + seed,
             "eval_time_s": 1.0, "image_AUROC": 0.5 + step / 1000 + 0.01 * seed, "pixel_AUROC": 0.8,
             "pixel_AUPRO": None, "train_loss_step": 1.0 / step}
            for step in (50, 100, 200)
        ]  # fmt: skip
        records.append({"model": "MLDFR", "dataset": "D", "category": "c", "seed": seed, "curve": points})
    single = [{"step": 1, "requested_step": None, "epoch": 1.0, "train_time_s": 3.0, "image_AUROC": 0.9}]
    records.append({"model": "Padim", "dataset": "D", "category": "c", "seed": 0, "curve": single})
    return records


def test_curves_are_averaged_over_seeds_per_step_and_drawn(tmp_path: Path):
    curves = curve_frame(_curve_records())
    assert len(curves) == 7
    assert curves["train_loss"].iloc[0] == pytest.approx(1 / 50)
    stats = curve_statistics(curves)
    mldfr = stats[stats["model"] == "MLDFR"]
    assert mldfr["at_step"].tolist() == [50, 100, 200]
    assert mldfr["image_AUROC_mean"].tolist() == pytest.approx([0.555, 0.605, 0.705])
    assert mldfr["seeds"].tolist() == [2, 2, 2]
    padim = stats[stats["model"] == "Padim"]
    assert padim["single_pass"].item()
    assert padim["at_step"].item() == 1
    written = write_report(_curve_records(), tmp_path)
    assert [path.name for path in written["curves"]] == ["curve_D_c.png"]
    table = (tmp_path / "curves.md").read_text()
    assert "| MLDFR | 100 | 10.0 | 10.5 ± 0.7 | 0.605 ± 0.007 | 0.800 ± 0.000 |" in table
    assert "train_loss_step" in table


def test_a_curve_of_separate_runs_is_one_point_per_run_and_a_model_per_run_in_the_tables(tmp_path: Path):
    records = [
        {"model": "RBAE", "dataset": "E", "category": "mono", "seed": 0, "error": None, "curve_run_steps": steps,
         "steps": steps, "epochs": steps // 32, "train_time_s": steps * 1.4, "image_AUROC": auroc, "pixel_AUROC": None}
        for steps, auroc in ((200, 0.74), (400, 0.85), (725, 0.89))
    ]  # fmt: skip
    records.append({"model": "Stfpm", "dataset": "E", "category": "mono", "seed": 0, "error": None, "epochs": 10,
                    "steps": 80, "train_time_s": 250.0, "image_AUROC": 0.849})  # fmt: skip
    records.append({"model": "Padim", "dataset": "F", "category": "x", "seed": 0, "error": None, "image_AUROC": 0.9})
    stats = curve_statistics(curve_frame(records))
    rbae = stats[stats["model"] == "RBAE"]
    assert rbae["at_step"].tolist() == [200, 400, 725]
    assert rbae["image_AUROC_mean"].tolist() == pytest.approx([0.74, 0.85, 0.89])
    assert not rbae["single_pass"].any()
    stfpm = stats[stats["model"] == "Stfpm"]
    assert stfpm["single_pass"].item()
    assert stfpm["image_AUROC_mean"].item() == pytest.approx(0.849)
    assert "Padim" not in set(stats["model"])  # no curve of separate runs on its dataset
    table = category_statistics(records_frame(records))
    assert table["model"].tolist() == ["RBAE (200 steps)", "RBAE (400 steps)", "RBAE (725 steps)", "Stfpm", "Padim"]
    assert "curve_run_steps_mean" not in table
    written = write_report(records, tmp_path)
    assert [path.name for path in written["curves"]] == ["curve_E_mono.png"]
    assert "| RBAE | 400 |" in (tmp_path / "curves.md").read_text()


def test_publish_replaces_only_the_marked_section_and_copies_charts(tmp_path: Path):
    from benchmarks.report import RESULTS_END, RESULTS_START, publish

    out = tmp_path / "run"
    records = fake_records(tmp_path)
    records[0]["ov_default_error"] = "timeout after 120 s"
    write_report(records, out)
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text(f"# Title\n\nbefore\n\n{RESULTS_START}\nold table\n{RESULTS_END}\n\nafter\n")
    publish(records, out, page, tmp_path / "docs" / "images" / "benchmarks")
    text = page.read_text()
    assert text.startswith("# Title\n\nbefore\n\n")
    assert text.endswith("\n\nafter\n")
    assert "old table" not in text
    assert "### DemoTextures" in text
    assert "| Padim | 256 | 0.750 ± 0.071 |" in text
    assert "### Which model?" in text
    assert "- Broken on DemoTextures/brick seed 0: failed, `RuntimeError: x|y`" in text
    assert "`ov_default_error`: `timeout after 120 s` (its other numbers stand)" in text
    assert "](images/benchmarks/accuracy_vs_latency_DemoTextures.png)" in text
    assert (tmp_path / "docs" / "images" / "benchmarks" / "heatmaps_DemoTextures_brick.png").is_file()
    publish(records, out, page, tmp_path / "docs" / "images" / "benchmarks")
    assert page.read_text() == text  # idempotent


def test_a_heatmap_grid_names_the_models_whose_maps_are_not_in_the_run_folder(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    from benchmarks.report import heatmap_grid

    records = [r for r in fake_records(tmp_path) if r["dataset"] == "DemoTextures" and r["category"] == "brick"]
    for record in records:
        if record["model"] == "Padim":
            record["heatmaps"] = str(tmp_path / "elsewhere" / "heatmaps.npz")  # reused: its arrays stayed behind
    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda self, text, **kw: titles.append(text) or original(self, text, **kw)
    )
    assert heatmap_grid(records_frame(records), "DemoTextures", "brick", tmp_path / "grid.png") is not None
    assert "no maps in this run folder for Padim" in titles[-1]
    assert "MLDFR" not in titles[-1].split("\n", 1)[-1]  # its maps are here


def test_the_run_line_says_what_else_the_machine_did_only_where_it_was_measured():
    info = {"hardware": {"cpu": "EPYC", "cores_available": 2, "ram_gib": 23.5}, "finished_at": "now"}
    base = {"dataset": "Toy", "category": "a", "model": "Padim", "seed": 0, "error": None, "wall_time_s": 60.0}
    measured = records_frame([{**base, "others_cpu_s": 90.0, "steal_s": 30.0}, {**base, "seed": 1}])
    line = run_line(measured, info)
    assert "other processes used 1.5 CPU-min and the hypervisor withheld 0.5 min" in line
    assert "measured for 1 of 2 jobs" in line
    assert "was not recorded" in run_line(records_frame([base]), info)
    assert "shared with other jobs" not in line


def test_the_run_line_names_the_cpu_features_where_they_were_recorded():
    frame = records_frame([{"dataset": "Toy", "category": "a", "model": "Padim", "seed": 0, "error": None}])
    info = {"hardware": {"cpu": "EPYC", "cores_available": 2, "ram_gib": 23.5, "cpu_flags": ["avx2"]}}
    assert "EPYC (avx2; 2 cores" in run_line(frame, info)
    del info["hardware"]["cpu_flags"]  # a run.json written before the flags were recorded
    assert "EPYC (2 cores" in run_line(frame, info)
