"""Shared model components: scoring, the mixin of shared concerns."""

import pytest
import torch
from anomalib.models.components import AnomalibModule
from lightning.pytorch import seed_everything
from torch import nn

from anomalib_ext.models.components.base import AnomalibExtModule
from anomalib_ext.models.components.scoring import AnomalyScorer, ScoreMode, image_score
from anomalib_ext.post_processing import OrderPreservingPostProcessor


def test_image_score_modes_by_value() -> None:
    anomaly_map = torch.zeros(2, 1, 10, 10)
    anomaly_map[0, 0, 0, :3] = torch.tensor([9.0, 6.0, 3.0])
    anomaly_map[1] = 1.0
    assert image_score(anomaly_map, "max").tolist() == [9.0, 1.0]
    assert image_score(anomaly_map, "mean").tolist() == pytest.approx([0.18, 1.0])
    # top 2% of 100 pixels = the two highest values
    assert image_score(anomaly_map, ScoreMode.TOPK, 0.02).tolist() == [7.5, 1.0]


def test_scorer_smooths_with_anomalibs_gaussian_and_scores_the_smoothed_map() -> None:
    anomaly_map = torch.zeros(1, 1, 33, 33)
    anomaly_map[0, 0, 16, 16] = 1.0
    output = AnomalyScorer(sigma=2)(anomaly_map)
    assert output.anomaly_map.shape == (1, 1, 33, 33)
    assert output.anomaly_map.sum().item() == pytest.approx(1.0, abs=1e-4)  # normalised kernel, inside the map
    assert output.pred_score.shape == (1,)
    assert output.pred_score.item() == pytest.approx(1 / (2 * torch.pi * 4), rel=0.02)  # peak of a 2-D Gaussian
    assert AnomalyScorer(sigma=0)(anomaly_map).pred_score.item() == 1.0


@pytest.mark.parametrize(("kwargs", "named"), [({"sigma": -1}, "sigma"), ({"topk_fraction": 0}, "topk_fraction")])
def test_scorer_rejects_bad_values_by_name(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AnomalyScorer(**kwargs)


def test_scorer_keeps_the_map_orientation() -> None:
    """An off-diagonal outlier stays where it is (row 2, column 11): a transposed map would move it."""
    anomaly_map = torch.zeros(1, 1, 16, 16)
    anomaly_map[0, 0, 2, 11] = 1.0
    smoothed = AnomalyScorer(sigma=1.0)(anomaly_map).anomaly_map
    assert divmod(int(smoothed.flatten().argmax()), 16) == (2, 11)


def test_bad_score_mode_lists_the_accepted_values() -> None:
    with pytest.raises(ValueError, match="'maximum' is not a valid ScoreMode"):
        AnomalyScorer(score_mode="maximum")


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 1, 1)


class Tiny(AnomalibExtModule, AnomalibModule):
    frozen_modules = ("encoder",)

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyModel()

    @property
    def trainer_arguments(self) -> dict:
        return {}

    @property
    def learning_type(self) -> str:
        return "one_class"


def test_mixin_keeps_anomalib_module_a_direct_base_and_sets_the_shared_components() -> None:
    model = Tiny()
    assert AnomalibModule in Tiny.__bases__
    assert isinstance(model.post_processor, OrderPreservingPostProcessor)
    names = {metric.name for metric in model.evaluator.test_metrics}
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= names


def test_frozen_modules_are_frozen_at_fit_start_and_back_in_eval_every_epoch_and_batch() -> None:
    model = Tiny()
    model.on_fit_start()
    assert not any(p.requires_grad for p in model.model.encoder.parameters())
    assert all(p.requires_grad for p in model.model.head.parameters())
    model.train()  # what Lightning's mode restoring amounts to
    model.on_train_epoch_start()
    assert not model.model.encoder.training
    assert model.model.head.training
    model.model.encoder.train()
    model.on_train_batch_start(None, 0)
    assert not model.model.encoder[1].training


def test_generator_follows_seed_everything_and_differs_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = []
    for rank in (0, 0, 1):
        seed_everything(7)
        model = Tiny()
        monkeypatch.setattr(Tiny, "global_rank", property(lambda _self, r=rank: r))
        model.on_fit_start()
        draws.append(torch.rand(3, generator=model.generator))
        model.on_fit_end()
        assert model.generator is None
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
