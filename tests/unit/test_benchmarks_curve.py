"""Learning-curve mode: points at the listed steps, training left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import seed_everything
from torch import nn
from torchvision.transforms.v2 import Resize

from benchmarks.curve import LearningCurve, evaluate, preserved_state
from tests.helpers.datasets import make_fake_mvtec


class TinyNet(nn.Module):
    """A frozen "backbone" with BatchNorm (kept in eval) and a trained head with dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Dropout(0.5), nn.Conv2d(8, 4, 1))

    def forward(self, images: torch.Tensor):
        from anomalib.data import InferenceBatch

        features = self.backbone(images)
        restored = self.head(features)
        if self.training:
            return features, restored
        anomaly_map = ((features - restored) ** 2).mean(dim=1)
        return InferenceBatch(pred_score=anomaly_map.flatten(1).amax(dim=1), anomaly_map=anomaly_map)


class Tiny(AnomalibModule):
    """A trained model whose frozen backbone must stay in eval mode (as the package's models keep theirs)."""

    def __init__(self) -> None:
        super().__init__(pre_processor=PreProcessor(transform=Resize((16, 16))), post_processor=False, visualizer=False)
        self.model = TinyNet()
        self.model.backbone.requires_grad_(False).eval()
        self.modes: list[tuple[bool, bool]] = []

    def training_step(self, batch, *args, **kwargs):
        del args, kwargs
        self.modes.append((self.model.backbone.training, self.model.head.training))
        features, restored = self.model(batch.image)
        loss = nn.functional.mse_loss(restored, features)
        self.log("train_loss", loss, on_step=True, prog_bar=False)
        return loss

    def validation_step(self, batch, *args, **kwargs):
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.head.parameters(), lr=0.1)

    @property
    def learning_type(self) -> LearningType:
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict:
        return {}


class TinyBank(MemoryBankMixin, Tiny):
    """A memory-bank model: no optimiser steps, fitted at the end of its single epoch."""

    def fit(self) -> None:
        self.fitted = True

    def training_step(self, batch, *args, **kwargs):
        del batch, args, kwargs
        return torch.tensor(0.0, requires_grad=True)

    def configure_optimizers(self):
        return None

    @property
    def trainer_arguments(self) -> dict:
        return {"max_epochs": 1}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> MVTecAD:
    root = make_fake_mvtec(tmp_path_factory.mktemp("curve") / "data", n_train=8, image_size=32)
    module = MVTecAD(root=root, category="toy", train_batch_size=2, eval_batch_size=4, num_workers=0)
    module.setup()
    return module


def _fit(model: AnomalibModule, datamodule: MVTecAD, tmp_path: Path, steps: int, curve: LearningCurve | None):
    seed_everything(3)
    engine = Engine(
        max_steps=steps,
        max_epochs=-1,
        callbacks=[curve] if curve else [],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
    )
    engine.fit(model=model, datamodule=datamodule)
    return engine


def test_curve_points_at_listed_steps_with_training_time_only(datamodule: MVTecAD, tmp_path: Path):
    model = Tiny()
    curve = LearningCurve([2, 5, 6], datamodule.test_dataloader)
    _fit(model, datamodule, tmp_path, 6, curve)
    assert [point["step"] for point in curve.points] == [2, 5, 6]
    assert [point["requested_step"] for point in curve.points] == [2, 5, 6]
    assert [point["epoch"] for point in curve.points] == [0.5, 1.25, 1.5]  # 4 batches per epoch
    for point in curve.points:
        assert 0 <= point["image_AUROC"] <= 1
        assert 0 <= point["pixel_AUROC"] <= 1
        assert 0 <= point["pixel_AUPRO"] <= 1
        assert point["train_loss"] > 0
    times = [point["train_time_s"] for point in curve.points]
    assert times == sorted(times)
    assert curve.eval_time_s == pytest.approx(sum(point["eval_time_s"] for point in curve.points))


def test_evaluating_leaves_modes_random_state_and_weights_as_without_curve(datamodule: MVTecAD, tmp_path: Path):
    plain = Tiny()
    _fit(plain, datamodule, tmp_path / "plain", 6, None)
    curved = Tiny()
    _fit(curved, datamodule, tmp_path / "curved", 6, LearningCurve([1, 2, 3, 4, 5], datamodule.test_dataloader))
    # the frozen backbone stays in eval and the head in train mode at every step, evaluations in between
    assert curved.modes == [(False, True)] * 6
    for (name, weight), other in zip(plain.state_dict().items(), curved.state_dict().values(), strict=True):
        assert torch.equal(weight, other), name


def test_preserved_state_restores_each_flag_and_the_random_generators():
    model = TinyNet()
    model.backbone.eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with preserved_state(model):
        assert not any(module.training for module in model.modules())
        torch.rand(100)
    assert [module.training for module in model.modules()] == [True, False, False, False, True, True, True, True]
    assert torch.equal(torch.rand(3), expected)


def test_a_memory_bank_model_gets_one_point_after_its_single_pass(datamodule: MVTecAD, tmp_path: Path):
    model = TinyBank()
    curve = LearningCurve([2, 4], datamodule.test_dataloader)
    _fit(model, datamodule, tmp_path, 4, curve)
    assert model.fitted
    assert len(curve.points) == 1
    assert curve.points[0]["requested_step"] is None
    assert curve.points[0]["epoch"] == 1.0


def test_pixel_metrics_are_none_without_masks(datamodule: MVTecAD):
    batches = [batch.update(in_place=False, gt_mask=None) for batch in datamodule.test_dataloader()]
    values = evaluate(Tiny(), batches)
    assert values["pixel_AUROC"] is None
    assert values["pixel_AUPRO"] is None
    assert 0 <= values["image_AUROC"] <= 1


def test_curve_steps_must_be_positive():
    with pytest.raises(ValueError, match="positive integers"):
        LearningCurve([0, 10], list)
