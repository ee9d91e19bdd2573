"""Measure N2N (offline CPU config) on DemoTextures: accuracy, training time, CPU latency.

Trains ``configs/model/n2n_cpu.yaml`` with anomalib's Engine on one DemoTextures category with
the paper's 20% normal validation split (A25), tests with raw (un-normalised) scores (spec T13),
and times single-image inference of the whole pipeline (pre-processor, model, post-processor)
in torch eager and in OpenVINO (f32 and the CPU's default precision hint).

Usage:
    .venv/bin/python scripts/n2n_measure.py --category brick --out results/n2n_demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator
from anomalib.post_processing import PostProcessor

from anomalib_ext.data import DemoTextures
from anomalib_ext.models import N2N

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn: object, warmup: int = 3, repeats: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    """Train, test, export and time N2N; print and write ``result.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/model/n2n_cpu.yaml"))
    parser.add_argument("--category", default="brick")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's trainer.max_epochs")
    parser.add_argument("--out", default="results/n2n_demo")
    parser.add_argument(
        "--ov-default-precision",
        action="store_true",
        help="also time OpenVINO with the CPU's default precision hint (bf16 here; it did not return in 4 min)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = yaml.safe_load(Path(args.config).read_text())
    init_args = config["model"]["init_args"]
    max_epochs = args.max_epochs or config["trainer"]["max_epochs"]
    size = tuple(init_args["image_size"])
    evaluator = Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3, strict=False),
        ],
    )
    model = N2N(**init_args, post_processor=PostProcessor(enable_normalization=False), evaluator=evaluator)
    datamodule = DemoTextures(
        category=args.category,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=0.2,
        seed=42,
    )
    engine = Engine(
        max_epochs=max_epochs,
        default_root_dir=out,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_s = time.perf_counter() - start
    epochs = engine.trainer.current_epoch
    metrics = engine.test(model, datamodule=datamodule)[0]
    print(json.dumps({"train_s": round(train_s, 1), "epochs_run": epochs, **metrics}), flush=True)

    model.eval()
    image = torch.rand(1, 3, *size)
    with torch.no_grad():
        torch_ms = _median_ms(lambda: model(image))
    xml = engine.export(model, ExportType.OPENVINO, export_root=out / "export", input_size=size)
    latency = {"torch_eager_ms": torch_ms}
    precisions = {"openvino_f32_ms": {"INFERENCE_PRECISION_HINT": "f32"}}
    if args.ov_default_precision:
        precisions["openvino_default_ms"] = None
    for name, cfg in precisions.items():
        inferencer = OpenVINOInferencer(xml, device="CPU", config=cfg)
        array = image.numpy()
        latency[name] = _median_ms(lambda inf=inferencer, arr=array: inf.predict(arr))
    result = {
        "category": args.category,
        "config": args.config,
        "epochs_run": epochs,
        "train_s": round(train_s, 1),
        "image_AUROC": float(metrics["image_AUROC"]),
        "pixel_AUROC": float(metrics["pixel_AUROC"]),
        "pixel_AUPRO_0.3": float(metrics["pixel_AUPRO"]),
        "torch_threads": torch.get_num_threads(),
        **{k: round(v, 1) for k, v in latency.items()},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
