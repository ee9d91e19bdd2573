"""Smoke test of the benchmark harness: two tiny models on one tiny category, end to end.

anomalib's PaDiM (offline EfficientNet-Lite0 through the cpu profile's backbone swap) and one of
ours, one epoch each, on a fake MVTec category of 64 px images. OpenVINO export is left out to keep
the test within CI's budget (the documented run exercises it); everything else runs: building from
the config as the CLI does, training without a validation pass, testing with the package's
evaluator, torch latency, heat maps, CSVs, markdown tables, charts, resume.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.__main__ import main
from tests.helpers.datasets import make_fake_mvtec

METRICS = ("image_AUROC", "image_F1Max", "image_AUPR", "pixel_AUROC", "pixel_F1Max", "pixel_AUPR", "pixel_AUPRO")


def _our_model() -> str:
    """One of our models that is importable and has a cpu config, else a second anomalib built-in."""
    from benchmarks.profiles import CONFIG_DIR, our_models

    try:
        ours = our_models()
    except Exception:  # noqa: BLE001  (a model being written must not break the harness test)
        return "Patchcore"
    for short in ("mldfr", "fmgrd"):
        if short in ours and (CONFIG_DIR / f"{short}_cpu.yaml").is_file():
            return short
    return "Patchcore"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_harness_writes_table_charts_and_resumes(tmp_path: Path):
    root = make_fake_mvtec(tmp_path / "mvtec", category="toy", n_train=8, n_test_good=4, n_test_defect=4)
    output = tmp_path / "run"
    argv = [
        "--profile", "cpu",
        "--models", f"Padim,{_our_model()}",
        "--datasets", "MVTecAD",
        "--categories", "toy",
        "--data-root", str(root),
        "--output", str(output),
        "--image-size", "64",
        "--max-epochs", "1",
        "--no-openvino",
        "--repeats", "2",
        "--warmup", "1",
    ]  # fmt: skip
    assert main(argv) == 0

    table = pd.read_csv(output / "results.csv")
    assert len(table) == 2
    errors = table["error"].dropna().tolist()
    assert not errors, errors
    for metric in METRICS:
        assert table[metric].between(0, 1).all(), (metric, table[metric].tolist())
    assert table["image_F1Score"].isna().all()  # no validation pass: no post-processor threshold
    assert (table["validation"] == "skipped").all()
    assert (table["torch_b1_latency_ms"] > 0).all()
    assert (output / "results.md").read_text().count("| toy | ") == 2
    assert (output / "which_model.md").read_text().count("\n") == 4
    assert (output / "accuracy_vs_latency_MVTecAD.png").is_file()
    assert (output / "bar_image_AUROC.png").is_file()
    assert (output / "heatmaps_MVTecAD_toy.png").is_file()
    run = (output / "run.json").read_text()
    assert '"seeds": [\n    0\n  ]' in run
    assert '"anomalib": "2.7.0"' in run

    records = sorted((output / "records").glob("*.json"))
    stamps = [path.stat().st_mtime_ns for path in records]
    assert main(argv) == 0  # a repeated run reuses every stored record
    assert [path.stat().st_mtime_ns for path in records] == stamps
