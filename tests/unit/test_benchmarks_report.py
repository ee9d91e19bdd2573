"""Report writing of the benchmark harness from a fake results table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import markdown_table, records_frame, write_report


def fake_records(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    heatmaps = tmp_path / "maps.npz"
    np.savez_compressed(
        heatmaps,
        images=rng.random((3, 3, 16, 16)).astype(np.float16),
        masks=(rng.random((3, 16, 16)) > 0.8).astype(np.uint8),
        maps=rng.random((3, 16, 16)).astype(np.float16),
        scores=rng.random(3),
        paths=np.array(["a.png", "b.png", "c.png"]),
    )
    records = []
    for category in ("brick", "grass"):
        for i, model in enumerate(("Padim", "MLDFR")):
            records.append(
                {
                    "model": model,
                    "dataset": "DemoTextures",
                    "category": category,
                    "profile": "cpu",
                    "error": None,
                    "input_size": 128,
                    "image_AUROC": 0.8 + 0.05 * i,
                    "pixel_AUROC": 0.9,
                    "pixel_AUPRO": 0.7,
                    "image_F1Score": 0.75,
                    "train_time_s": 12.0 + i,
                    "torch_b1_latency_ms": 40.0 + i,
                    "ov_f32_b1_latency_ms": 10.0 + i,
                    "ov_f32_b8_throughput_ips": 100.0,
                    "openvino_bin_mb": 3.0,
                    "heatmaps": str(heatmaps),
                }
            )
    records.append({"model": "Broken", "dataset": "DemoTextures", "category": "brick", "error": "RuntimeError: x|y"})
    return records


def test_report_writes_csv_markdown_charts_and_heatmap_grids(tmp_path: Path):
    written = write_report(fake_records(tmp_path), tmp_path / "out")
    out = tmp_path / "out"
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 5
    assert list(table.columns[:4]) == ["dataset", "category", "model", "profile"]
    markdown = (out / "results.md").read_text()
    assert "| DemoTextures | brick | Padim | 128 | 0.800 |" in markdown
    assert "RuntimeError: x\\|y" in markdown  # pipes escaped, error column kept
    assert (out / "accuracy_vs_latency_DemoTextures.png").stat().st_size > 1000
    assert (out / "bar_image_AUROC.png").is_file()
    assert (out / "heatmaps_DemoTextures_brick.png").is_file()
    assert (out / "heatmaps_DemoTextures_grass.png").is_file()
    assert len(written["heatmaps"]) == 2
    for path in written["charts"]:
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_markdown_table_marks_missing_numbers_and_drops_an_empty_error_column():
    frame = records_frame([{"model": "A", "dataset": "D", "category": "c", "image_AUROC": None, "error": None}])
    markdown = markdown_table(frame)
    assert "error" not in markdown
    assert "| D | c | A | - |" in markdown


def test_report_of_only_failures_still_writes_the_tables(tmp_path: Path):
    records = [{"model": "A", "dataset": "D", "category": "c", "error": "boom"}]
    written = write_report(records, tmp_path)
    assert written["charts"] == []
    assert "boom" in (tmp_path / "results.md").read_text()


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
    assert "| DemoTextures | brick | Padim | 128 |" in text
    assert "- Broken on brick: failed, `RuntimeError: x|y`" in text
    assert "`ov_default_error`: `timeout after 120 s` (its other numbers stand)" in text
    assert "](images/benchmarks/accuracy_vs_latency_DemoTextures.png)" in text
    assert (tmp_path / "docs" / "images" / "benchmarks" / "heatmaps_DemoTextures_brick.png").is_file()
    publish(records, out, page, tmp_path / "docs" / "images" / "benchmarks")
    assert page.read_text() == text  # idempotent
