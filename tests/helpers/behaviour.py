"""Behaviour-test data only a learning model can separate, and the zero-learning baseline that must fail.

Normal images are an oriented stripe texture with a random phase (so the mean training image is flat
and no pixel position is special) plus fine noise, in the grey range [0.25, 0.75]. Every defect stays
inside that range, so neither a brightness test (``|grey - 0.5|``) nor the distance to the mean training
image finds it; a model has to learn what the texture looks like:

- ``rotated``: the stripes turn by 90 degrees inside the defect;
- ``period``: the stripes are 2.5 times finer inside the defect;
- ``blur``: the stripes are washed out (a local blur towards the mean grey);
- ``warp``: a swirl bends the stripes;
- ``bright`` / ``dark``: the stripes keep their direction at lower contrast on a brighter / darker
  level (both polarities, still inside the normal range).

Masks are exact. ``make_behaviour_dataset`` writes the MVTec AD layout (category ``texture``), read with
anomalib's ``MVTecAD``; ``zero_learning_auroc`` scores the test set with the squared distance to the
mean training image, the baseline that every behaviour test asserts to fail.

Example:
    >>> root = make_behaviour_dataset(tmp_path)  # doctest: +SKIP
    >>> image_auroc, pixel_auroc = zero_learning_auroc(root)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_auroc

CATEGORY = "texture"
DEFECT_KINDS = ("rotated", "period", "blur", "warp", "bright", "dark")
PERIOD_FRACTION = 1 / 6  # stripe period as a fraction of the image side
AMPLITUDE = 0.22
NOISE = 0.015


def _stripes(
    xx: np.ndarray, yy: np.ndarray, size: int, phase: float, angle: float, period_scale: float = 1.0
) -> np.ndarray:
    period = PERIOD_FRACTION * size * period_scale
    along = xx * np.cos(angle) + yy * np.sin(angle)
    return np.sin(2 * np.pi * along / period + phase)


def normal_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal texture in [0, 1], ``(size, size)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    image = 0.5 + AMPLITUDE * _stripes(xx, yy, size, phase, angle=np.pi / 6)
    return np.clip(image + rng.normal(0.0, NOISE, image.shape), 0.25, 0.75)


def defect_mask(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float, float]:
    """An elliptical mask away from the border: ``(mask, cy, cx, radius)``."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, size=2)
    ry, rx = rng.uniform(0.12 * size, 0.18 * size, size=2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask, cy, cx, max(ry, rx)


def defective_image(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with one in-range defect of ``kind``; ``(image in [0, 1], bool mask)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    angle = np.pi / 6
    image = 0.5 + AMPLITUDE * _stripes(xx, yy, size, phase, angle)
    mask, cy, cx, radius = defect_mask(rng, size)
    if kind == "rotated":
        inside = 0.5 + AMPLITUDE * _stripes(xx, yy, size, phase, angle + np.pi / 2)
    elif kind == "period":
        inside = 0.5 + AMPLITUDE * _stripes(xx, yy, size, phase, angle, period_scale=0.4)
    elif kind == "blur":
        inside = 0.5 + 0.25 * AMPLITUDE * _stripes(xx, yy, size, phase, angle)
    elif kind == "warp":
        distance = np.hypot(yy - cy, xx - cx)
        twist = 2.5 * np.clip(1 - distance / radius, 0, 1)
        wy = cy + (yy - cy) * np.cos(twist) - (xx - cx) * np.sin(twist)
        wx = cx + (yy - cy) * np.sin(twist) + (xx - cx) * np.cos(twist)
        inside = 0.5 + AMPLITUDE * _stripes(wx, wy, size, phase, angle)
    elif kind in {"bright", "dark"}:
        level = 0.5 + (0.12 if kind == "bright" else -0.12)
        inside = level + 0.4 * AMPLITUDE * _stripes(xx, yy, size, phase, angle)
    else:
        msg = f"Unknown defect kind {kind!r}: expected one of {DEFECT_KINDS}."
        raise ValueError(msg)
    image = np.where(mask, inside, image)
    image = np.clip(image + rng.normal(0.0, NOISE, image.shape), 0.25, 0.75)
    return image, mask


def _save_gray(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(path)


def make_behaviour_dataset(
    root: str | Path,
    n_train: int = 32,
    n_test_good: int = 12,
    n_test_defect: int = 12,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the dataset in MVTec AD layout under ``root/texture``; return ``root``.

    Defect kinds cycle through :data:`DEFECT_KINDS`, so 12 defective images hold two of each.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    category = root / CATEGORY
    for index in range(n_train):
        _save_gray(normal_image(rng, size), category / "train" / "good" / f"{index:03d}.png")
    for index in range(n_test_good):
        _save_gray(normal_image(rng, size), category / "test" / "good" / f"{index:03d}.png")
    for index in range(n_test_defect):
        kind = DEFECT_KINDS[index % len(DEFECT_KINDS)]
        image, mask = defective_image(rng, size, kind)
        _save_gray(image, category / "test" / kind / f"{index:03d}.png")
        _save_gray(mask.astype(np.float64), category / "ground_truth" / kind / f"{index:03d}_mask.png")
    return root


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def zero_learning_auroc(root: str | Path) -> tuple[float, float]:
    """Image and pixel AUROC of the squared distance to the mean training image (score: the map's max)."""
    category = Path(root) / CATEGORY
    mean = np.mean([_read(path) for path in sorted((category / "train" / "good").glob("*.png"))], axis=0)
    scores, labels, maps, masks = [], [], [], []
    for path in sorted((category / "test").glob("*/*.png")):
        anomaly_map = (_read(path) - mean) ** 2
        kind = path.parent.name
        mask = (
            np.zeros_like(anomaly_map)
            if kind == "good"
            else _read(category / "ground_truth" / kind / f"{path.stem}_mask.png")
        )
        scores.append(anomaly_map.max())
        labels.append(int(kind != "good"))
        maps.append(anomaly_map.ravel())
        masks.append(mask.ravel() > 0.5)
    image = binary_auroc(torch.tensor(scores), torch.tensor(labels)).item()
    pixel = binary_auroc(torch.tensor(np.concatenate(maps)), torch.tensor(np.concatenate(masks)).long()).item()
    return image, pixel


def raw_auroc(model: torch.nn.Module, datamodule: object) -> tuple[float, float]:
    """Image and pixel AUROC of ``model``'s raw outputs (before any post-processor) on the test images.

    For a model that has not been fitted (no post-processor statistics yet), so an untrained model and
    the trained one are scored the same way. Maps are resized to the masks' size. Every module's
    train/eval mode is restored afterwards (Lightning keeps the modes it finds when ``fit`` starts).
    """
    datamodule.setup("test")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            output = model.model(model.pre_processor.transform(batch.image))
            anomaly_map = output.anomaly_map.reshape(len(batch.image), 1, *output.anomaly_map.shape[-2:])
            mask = batch.gt_mask.reshape(len(batch.image), -1, *batch.gt_mask.shape[-2:])[:, :1]
            anomaly_map = torch.nn.functional.interpolate(anomaly_map, size=mask.shape[-2:], mode="bilinear")
            scores.append(output.pred_score.reshape(-1))
            labels.append(batch.gt_label.reshape(-1).long())
            maps.append(anomaly_map.reshape(-1))
            masks.append(mask.reshape(-1).long())
    for module, training in modes.items():
        module.train(training)
    image = binary_auroc(_unit(torch.cat(scores)), torch.cat(labels)).item()
    pixel = binary_auroc(_unit(torch.cat(maps)), torch.cat(masks)).item()
    return image, pixel


def _unit(values: torch.Tensor) -> torch.Tensor:
    """``values`` scaled into [0, 1], order kept: torchmetrics reads values outside it as logits (sigmoid ties)."""
    values = values.double()
    return (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)


def behaviour_data(root: Path, min_image_auroc: float, min_pixel_auroc: float, **kwargs: int) -> Path:
    """:func:`make_behaviour_dataset` under ``root``, after checking that the zero-learning baseline fails it.

    The baseline must stay below the floors the calling test asks of a trained model, so passing them
    takes learning.
    """
    root = make_behaviour_dataset(root, **kwargs)
    image_auroc, pixel_auroc = zero_learning_auroc(root)
    assert image_auroc < min_image_auroc, f"the baseline reaches image AUROC {image_auroc:.3f}"
    assert pixel_auroc < min_pixel_auroc, f"the baseline reaches pixel AUROC {pixel_auroc:.3f}"
    return root


def train_and_test(model: torch.nn.Module, datamodule: object, epochs: int, results: Path) -> dict[str, float]:
    """Train ``model`` for ``epochs`` through anomalib's ``Engine`` (no validation); its ``Engine.test`` metrics."""
    from anomalib.engine import Engine

    engine = Engine(
        max_epochs=epochs,
        default_root_dir=results,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    return engine.test(model=model, datamodule=datamodule, verbose=False)[0]


def fit_and_test(model: torch.nn.Module, datamodule: object, epochs: int, results: Path) -> dict[str, float]:
    """:func:`train_and_test`, plus ``untrained_pixel_AUROC`` and ``trained_pixel_AUROC`` (:func:`raw_auroc`)."""
    _, untrained = raw_auroc(model, datamodule)
    metrics = train_and_test(model, datamodule, epochs, results)
    _, trained = raw_auroc(model, datamodule)
    return {**metrics, "untrained_pixel_AUROC": untrained, "trained_pixel_AUROC": trained}


def behaviour_datamodule(root: Path, train_batch_size: int, **split: Any) -> object:
    """anomalib's ``MVTecAD`` on the behaviour data (all 24 evaluation images in one batch).

    ``split`` goes to ``MVTecAD`` (``val_split_mode``, ``val_split_ratio``, ``seed``); without it,
    anomalib's default: validation is the test set.
    """
    from anomalib.data import MVTecAD

    return MVTecAD(
        root=root, category=CATEGORY, train_batch_size=train_batch_size, eval_batch_size=24, num_workers=0, **split
    )


BEHAVIOUR_SIZE = 64

#: Every model as its behaviour test trains it on this data (64 px, 16 normal training images, pretrained
#: EfficientNet-Lite0 where the model has a backbone): constructor arguments (CLI spelling), training batch
#: size and epochs. The behaviour tests and the INT8 test (``tests/integration/test_int8.py``) build from here.
BEHAVIOUR_MODELS: dict[str, dict[str, Any]] = {
    "FMGRD": {
        "init_args": {
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2", "blocks.4"],
            "scoring": {"sigma": 1},
        },
        "train_batch_size": 4,
        "max_epochs": 5,
    },
    "MLDFR": {
        "init_args": {
            "cnn_backbone": "efficientnet_lite0",
            "cnn_layers": [1, 2, 3],
            "vit_backbone": None,
            "restorer": {"num_blocks": 2, "attention_type": "talking_heads"},
            "sigma": 8.0 * BEHAVIOUR_SIZE / 384,
        },
        "train_batch_size": 4,
        "max_epochs": 12,
    },
    "N2N": {
        # a fixed schedule: nothing is selected on a validation set
        "init_args": {"base_channels": 8, "lr": 2e-3, "early_stopping_patience": 0, "restore_best_weights": False},
        "train_batch_size": 8,
        "max_epochs": 40,
    },
    "RBAE": {
        "init_args": {
            "phase1": {"epochs": 6},
            "phase2": {"epochs": 12},
            "lr": 1e-3,
            "network": {"encoder_channels": [8, 16, 32, 32, 32], "ffm_mid_channels": 16},
            "perceptual_backbone": "efficientnet_lite0",
            "perceptual_layers": [0, 1],
        },
        "train_batch_size": 4,
        "max_epochs": 18,
    },
    "SMCC": {
        "init_args": {
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
            "n_components": 3,
            "memory_bank_images": 8,
            "lr": 1e-3,
            "features": {"fusion_layer_index": 0},
            "training": {"weight_decay": 0.0},  # see tests/integration/test_smcc_behaviour.py
            "scoring": {"sigma": 2.0},
        },
        "train_batch_size": 8,
        "max_epochs": 5,
    },
}


def behaviour_model(name: str, **overrides: Any) -> torch.nn.Module:
    """``name`` built from :data:`BEHAVIOUR_MODELS` (``overrides`` win), for :data:`BEHAVIOUR_SIZE` inputs."""
    from anomalib_ext.registry import registered_models

    cls = registered_models()[name]
    init_args = {**copy.deepcopy(BEHAVIOUR_MODELS[name]["init_args"]), **overrides}
    init_args.setdefault("pre_processor", cls.configure_pre_processor((BEHAVIOUR_SIZE, BEHAVIOUR_SIZE)))
    return cls(visualizer=False, **init_args)


def check_training_finds_defects(
    name: str,
    data_root: Path,
    results: Path,
    *,
    min_image_auroc: float,
    min_pixel_auroc: float,
    min_aupro: float,
    min_training_gain: float,
) -> dict[str, float]:
    """Train behaviour model ``name`` (seed 0) and check what it finds on the behaviour data.

    Fails unless ``Engine.test`` reaches the three floors and training added ``min_training_gain`` of
    raw pixel AUROC over the same model before training (:func:`fit_and_test`). Returns the metrics.
    """
    from lightning.pytorch import seed_everything

    seed_everything(0)  # initialisation, synthetic damage or noise, batch order
    spec = BEHAVIOUR_MODELS[name]
    datamodule = behaviour_datamodule(data_root, train_batch_size=spec["train_batch_size"])
    metrics = fit_and_test(behaviour_model(name), datamodule, spec["max_epochs"], results)
    untrained, trained = metrics["untrained_pixel_AUROC"], metrics["trained_pixel_AUROC"]
    print(f"{name} behaviour: {metrics}, raw pixel AUROC untrained {untrained:.3f} trained {trained:.3f}")
    floors = {"image_AUROC": min_image_auroc, "pixel_AUROC": min_pixel_auroc, "pixel_AUPRO": min_aupro}
    below = {key: f"{metrics[key]:.3f} < {floor}" for key, floor in floors.items() if metrics[key] < floor}
    assert not below, f"{name} trained on the behaviour data is below its floors: {below}"
    assert trained >= untrained + min_training_gain, (
        f"{name}: training took raw pixel AUROC from {untrained:.3f} to {trained:.3f}, "
        f"less than the {min_training_gain} it must add"
    )
    return metrics
