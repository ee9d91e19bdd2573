r"""SMCC side by side with anomalib's PatchCore and PaDiM: accuracy, memory-bank bytes, CPU latency.

Same data, input size and backbone for all three (EfficientNet-Lite0 with offline weights through
:mod:`anomalib_ext.backbones`; the built-ins get the same extractor swapped in). SMCC uses
``configs/model/smcc_cpu.yaml``. Writes one JSON line per model to ``--out``.

Example:
    .venv/bin/python -m benchmarks.smcc_compare --data-root /tmp/smcc/demo --category brick \
        --out /tmp/smcc/compare.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.models import Padim, Patchcore
from lightning.pytorch import seed_everything

from anomalib_ext.backbones import FeatureExtractor
from anomalib_ext.data import DemoTextures
from anomalib_ext.models import SMCC

ROOT = Path(__file__).resolve().parents[1]


def state_bytes(model: torch.nn.Module, names: tuple[str, ...]) -> int:
    """Bytes of the named buffers (the data-built state that scoring needs)."""
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.split(".")[-1] in names)


def latency(fn: object, image: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``fn(image)`` over ``repeats`` calls after one warm-up call."""
    fn(image)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, size: int) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The model and the names of its data-built scoring buffers."""
    if name == "SMCC":
        args = yaml.safe_load((ROOT / "configs/model/smcc_cpu.yaml").read_text())["model"]["init_args"]
        return SMCC(**(args | {"image_size": [size, size]})), ("memory_bank", "centres")
    if name == "Patchcore":
        layers = ["blocks.2", "blocks.4"]  # strides 8 and 16, as PatchCore's layer2/layer3
        model = Patchcore(backbone="efficientnet_lite0", layers=layers, pre_trained=False, coreset_sampling_ratio=0.1)
        model.pre_processor = SMCC.configure_pre_processor((size, size))
        model.model.feature_extractor = FeatureExtractor("efficientnet_lite0", layers=layers).eval()
        return model, ("memory_bank",)
    layers = ["blocks.1", "blocks.2", "blocks.4"]  # strides 4, 8, 16, as PaDiM's layer1..3
    model = Padim(backbone="efficientnet_lite0", layers=layers, pre_trained=False, n_features=100)
    model.pre_processor = SMCC.configure_pre_processor((size, size))
    model.model.feature_extractor = FeatureExtractor("efficientnet_lite0", layers=layers).eval()
    return model, ("mean", "inv_covariance")


def run(name: str, args: argparse.Namespace) -> dict:
    """Train, test, export and time one model."""
    seed_everything(0)
    model, state = build(name, args.size)
    model.evaluator = SMCC.configure_evaluator()  # same metrics (incl. AUPRO at FPR 0.3) for all
    datamodule = DemoTextures(
        root=args.data_root, category=args.category, train_batch_size=16, eval_batch_size=8, num_workers=0
    )
    work = Path(tempfile.mkdtemp(prefix=f"smcc_compare_{name}_"))
    engine = Engine(
        max_epochs=args.epochs if name == "SMCC" else 1,
        default_root_dir=work,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_s = time.perf_counter() - start
    metrics = engine.test(model, datamodule=datamodule, verbose=False)[0]
    model.eval()
    image = torch.rand(1, 3, args.size, args.size)
    with torch.no_grad():
        torch_s = latency(model, image, args.repeats)
    ov: dict[str, float | str] = {}
    try:
        path = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=work,
            input_size=(args.size, args.size),
            onnx_kwargs={"opset_version": 18},
        )
        for precision in ("f32", "bf16"):
            inferencer = OpenVINOInferencer(path, device="CPU", config={"INFERENCE_PRECISION_HINT": precision})
            ov[precision] = round(latency(inferencer.predict, image, args.repeats), 4)
    except Exception as error:  # noqa: BLE001  (a built-in that does not export is a result, not a crash)
        ov = {"f32": f"export failed: {error}"[:200], "bf16": "n/a"}
    return {
        "model": name,
        "category": args.category,
        "input": args.size,
        "epochs": args.epochs if name == "SMCC" else 1,
        "image_AUROC": metrics.get("image_AUROC"),
        "pixel_AUROC": metrics.get("pixel_AUROC"),
        "pixel_AUPRO": metrics.get("pixel_AUPRO"),
        "train_s": round(train_s, 1),
        "bank_bytes": state_bytes(model, state),
        "torch_latency_s": round(torch_s, 4),
        "openvino_f32_latency_s": ov["f32"],
        "openvino_bf16_latency_s": ov["bf16"],
    }


def main() -> None:
    """Run every model of ``--models`` and append one JSON line each to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="./datasets/demo_textures")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default="SMCC,Patchcore,Padim")
    parser.add_argument("--out", default="smcc_compare.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.models.split(","):
        row = run(name, args)
        print(json.dumps(row), flush=True)
        with Path(args.out).open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
