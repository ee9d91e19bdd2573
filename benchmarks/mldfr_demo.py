"""Benchmark of MLDFR's offline CPU configuration on the demo textures (anomalib_ext.data.DemoTextures).

Trains with ``configs/model/mldfr_cpu.yaml``'s model and trainer settings, tests (image AUROC, pixel
AUROC, AUPRO up to FPR 0.3), exports to OpenVINO and times single-image CPU inference with torch
and with OpenVINO (f32 and the CPU plugin's default precision). Prints one JSON line.

Usage:
    .venv/bin/python benchmarks/mldfr_demo.py --category brick --max_epochs 10 --batch_size 8
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from jsonargparse import ArgumentParser

from anomalib_ext.data import DemoTextures
from anomalib_ext.models import MLDFR

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model" / "mldfr_cpu.yaml"


def _model_from_config(path: Path) -> MLDFR:
    parser = ArgumentParser()
    parser.add_argument("--model", type=MLDFR)
    config = yaml.safe_load(path.read_text())
    init = parser.instantiate_classes(parser.parse_object({"model": config["model"]["init_args"]}))
    return init.model


def _latency(function, repeats: int = 20) -> float:  # noqa: ANN001
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    """Run the benchmark and print the results as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="brick")
    parser.add_argument("--max_epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--root", default="./results/mldfr_demo")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(args.root)
    model = _model_from_config(CONFIG)
    datamodule = DemoTextures(
        root=root / "data", category=args.category, train_batch_size=args.batch_size, eval_batch_size=8, num_workers=0
    )
    engine = Engine(max_epochs=args.max_epochs, default_root_dir=root, accelerator="cpu", devices=1, logger=False)
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    metrics = engine.test(model, datamodule=datamodule)[0]

    size = tuple(model.input_size)
    image = torch.rand(1, 3, *size)
    model.eval()
    with torch.no_grad():
        torch_ms = _latency(lambda: model(image))
    export = engine.export(model, ExportType.OPENVINO, export_root=root / "export", input_size=size)
    xml = Path(export).with_suffix(".xml")
    array = image.numpy()
    ov_f32 = OpenVINOInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    ov_default = OpenVINOInferencer(xml, device="CPU")
    result = {
        "category": args.category,
        "input_size": size,
        "max_epochs": args.max_epochs,
        "train_batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        **{key: round(float(value), 4) for key, value in metrics.items()},
        "torch_ms_per_image": round(torch_ms, 1),
        "openvino_f32_ms_per_image": round(_latency(lambda: ov_f32.predict(array)), 1),
        "openvino_default_ms_per_image": round(_latency(lambda: ov_default.predict(array)), 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
