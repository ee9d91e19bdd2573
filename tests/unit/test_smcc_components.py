"""Unit tests of SMCC's components: fusion, centre set, loss (spec section 10, items 1-15)."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_ext.models.smcc.centres import (
    WeightedDiagGMM,
    build_centre_set,
    default_coreset_alpha,
    greedy_coreset,
    kmeanspp_seeds,
    sensitivities,
    sensitivity_coreset,
)
from anomalib_ext.models.smcc.config import ClusteringConfig, FeatureConfig
from anomalib_ext.models.smcc.fusion import MultiLayerFusion
from anomalib_ext.models.smcc.loss import SmccLoss
from anomalib_ext.models.smcc.torch_model import SmccModel

LITE0_LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


# ---------------------------------------------------------------------------- shapes (items 1-4)
@pytest.mark.parametrize(("fusion_layer_index", "side"), [(1, 32), (0, 64)])
def test_lite0_fusion_shapes_follow_the_offline_shape_table(fusion_layer_index: int, side: int) -> None:
    with torch.device("meta"):  # shapes only: no weights, no compute
        config = FeatureConfig(fusion_layer_index=fusion_layer_index)
        model = SmccModel("efficientnet_lite0", LITE0_LAYERS, pre_trained=False, features=config)
        features = model.embed(torch.empty(1, 3, 256, 256))
    assert model.feature_extractor.out_dims == [24, 40, 112, 320]
    assert model.feature_extractor.reductions == [4, 8, 16, 32]
    assert features.shape == (1, 24 + 40 + 112 + 320, side, side)
    assert model.to_patches(features).shape == (side * side, 496)


def test_wide_resnet50_fusion_shapes_follow_the_paper_shape_table() -> None:
    with torch.device("meta"):  # shapes only: no weights, no compute
        model = SmccModel("wide_resnet50_2.tv_in1k", pre_trained=False)
        image = torch.empty(1, 3, 224, 224)
        tapped = model.feature_extractor(image)
        fused = model.embed(image)
    assert [tuple(t.shape) for t in tapped.values()] == [
        (1, 256, 56, 56),
        (1, 512, 28, 28),
        (1, 1024, 14, 14),
        (1, 2048, 7, 7),
    ]
    assert fused.shape == (1, 3840, 56, 56)
    assert model.memory_bank.shape == (0, 3840)


def test_fusion_of_equal_sizes_is_a_pure_concatenation() -> None:
    fusion = MultiLayerFusion([3, 5], [8, 8])
    maps = [torch.rand(2, 3, 6, 6), torch.rand(2, 5, 6, 6)]
    assert torch.equal(fusion(maps), torch.cat(maps, dim=1))
    assert fusion.out_channels == 8


def test_fusion_pools_finer_and_upsamples_coarser_maps_to_the_target() -> None:
    fusion = MultiLayerFusion([2, 3, 4], [4, 8, 16], target_index=1)
    out = fusion([torch.rand(1, 2, 16, 16), torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4, 4)])
    assert out.shape == (1, 9, 8, 8)


def test_fusion_with_aggregation_equals_anomalib_patchcore_embedding() -> None:
    """``aggregation_kernel=3`` is PatchCore's: each tap averaged on its own grid, then resized."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    patchcore = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone="resnet18", pre_trained=False)
    torch.manual_seed(0)
    taps = {"blocks.2": torch.rand(2, 5, 8, 8), "blocks.4": torch.rand(2, 7, 4, 4)}
    expected = patchcore.generate_embedding({name: patchcore.feature_pooler(t) for name, t in taps.items()})
    fusion = MultiLayerFusion([5, 7], [8, 16], aggregation_kernel=3)
    torch.testing.assert_close(fusion(list(taps.values())), expected)


@pytest.mark.parametrize("batch", [1, 2])
def test_eval_forward_returns_score_per_image_and_map_at_input_size(batch: int) -> None:
    model = SmccModel(
        "efficientnet_lite0", LITE0_LAYERS, pre_trained=False, features=FeatureConfig(fusion_layer_index=1)
    )
    images = torch.rand(batch, 3, 64, 64)
    with torch.no_grad():
        model.set_memory(model.to_patches(model.embed(images)), images)
        output = model.eval()(images)
    assert output.pred_score.shape == (batch,)
    assert output.anomaly_map.shape == (batch, 1, 64, 64)
    assert (output.anomaly_map >= 0).all()


def test_unknown_layer_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown layer"):
        SmccModel("efficientnet_lite0", ["layer1", "layer2"], pre_trained=False)


def test_eval_forward_with_an_empty_bank_raises() -> None:
    model = SmccModel("efficientnet_lite0", LITE0_LAYERS, pre_trained=False).eval()
    with pytest.raises(RuntimeError, match="memory bank is empty"):
        model(torch.rand(1, 3, 64, 64))


# ---------------------------------------------------------------------------- loss (items 5-9)
CENTRES = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
PATCHES = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 3.0]])


def test_loss_on_hand_computed_points_mean_reduction() -> None:
    # d1 = (1, 1, 3), d2 = (3, 3, 5): L_c = 5/3, L_o = -6/3 = -2, total = -1/3
    total, parts = SmccLoss()(PATCHES, CENTRES)
    assert parts["loss_c"].item() == pytest.approx(5 / 3, abs=1e-5)
    assert parts["loss_o"].item() == pytest.approx(-2.0, abs=1e-5)
    assert total.item() == pytest.approx(-1 / 3, abs=1e-5)


def test_loss_on_hand_computed_points_sum_reduction_and_weights() -> None:
    total, parts = SmccLoss(reduction="sum")(PATCHES, CENTRES)
    assert (parts["loss_c"].item(), parts["loss_o"].item(), total.item()) == pytest.approx((5.0, -6.0, -1.0), abs=1e-5)
    weighted, _ = SmccLoss(lambda_c=2.0, lambda_o=0.5, reduction="sum")(PATCHES, CENTRES)
    assert weighted.item() == pytest.approx(2 * 5 - 0.5 * 6, abs=1e-5)


def test_squared_distance_loss_uses_squared_distances() -> None:
    _, parts = SmccLoss(distance="squared_euclidean")(PATCHES, CENTRES)
    # d1^2 = (1, 1, 9), d2^2 = (9, 9, 25)
    assert parts["loss_c"].item() == pytest.approx(11 / 3, abs=1e-4)
    assert parts["loss_o"].item() == pytest.approx((-8 - 8 - 16) / 3, abs=1e-4)


def test_patch_on_a_centre_gives_finite_loss_and_gradients() -> None:
    patch = torch.tensor([[0.0, 0.0]], requires_grad=True)
    total, parts = SmccLoss()(patch, CENTRES)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(patch.grad).all()
    assert parts["loss_o"].item() == pytest.approx(-4.0, abs=1e-5)


def test_loss_is_bounded_by_the_largest_centre_distance() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=generator)
    patches = 3 * torch.randn(200, 8, generator=generator)
    total, parts = SmccLoss()(patches, centres)
    assert parts["loss_o"].item() <= 0
    assert total.item() >= -torch.cdist(centres, centres).max().item() - 1e-5


def test_centres_get_no_gradient_and_features_do() -> None:
    centres = CENTRES.clone().requires_grad_(True)
    patches = PATCHES.clone().requires_grad_(True)
    SmccLoss()(patches, centres)[0].backward()
    assert centres.grad is None
    assert patches.grad is not None
    assert patches.grad.abs().sum() > 0


def test_loss_with_a_single_centre_raises() -> None:
    with pytest.raises(ValueError, match="at least 2 centres"):
        SmccLoss()(PATCHES, CENTRES[:1])


# ---------------------------------------------------------------------------- centre set (items 10-15)
def test_sensitivity_matches_the_hand_computed_example() -> None:
    points = torch.tensor([[0.0], [1.0], [10.0], [12.0]])
    seeds = torch.tensor([[0.0], [10.0]])
    # d^2 = (0, 1, 0, 4); cluster costs (1, 4) over 2 points each; total cost 5
    # s = d^2 + 2 * cost_j / 2 + 2 * 5 / 2 = (0+1+5, 1+1+5, 0+4+5, 4+4+5) = (6, 7, 9, 13)
    s = sensitivities(points, seeds, alpha=1.0, uniform_coef=2.0)
    assert s.tolist() == pytest.approx([6.0, 7.0, 9.0, 13.0])


def test_importance_weights_are_unbiased() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(400, 3, generator=generator)
    seeds = kmeanspp_seeds(points, 4, generator)
    totals = [sensitivity_coreset(points, seeds, 40, 1.0, generator=generator)[1].sum() for _ in range(100)]
    assert torch.stack(totals).mean().item() == pytest.approx(400, rel=0.05)


def test_kmeanspp_puts_one_seed_per_separated_blob_and_is_reproducible() -> None:
    generator = torch.Generator().manual_seed(1)
    offsets = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    points = torch.cat([offset + torch.randn(50, 2, generator=generator) for offset in offsets])
    seeds = kmeanspp_seeds(points, 3, torch.Generator().manual_seed(5))
    blobs = torch.cdist(seeds, offsets).argmin(dim=1)
    assert sorted(blobs.tolist()) == [0, 1, 2]
    assert torch.equal(seeds, kmeanspp_seeds(points, 3, torch.Generator().manual_seed(5)))


def test_greedy_coreset_covers_every_blob_and_keeps_the_farthest_point_first() -> None:
    generator = torch.Generator().manual_seed(1)
    offsets = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [60.0, 60.0]])
    points = torch.cat([offset + torch.randn(200, 2, generator=generator) for offset in offsets])
    points = torch.cat([points[:600], points[600:][:20]])  # a small fourth blob: the coreset still covers it
    indices = greedy_coreset(points, 4)
    blobs = torch.cdist(points[indices], offsets).argmin(dim=1)
    assert sorted(blobs.tolist()) == [0, 1, 2, 3]
    assert indices[0] == (points - points.mean(0)).pow(2).sum(1).argmax()
    assert torch.equal(indices, greedy_coreset(points, 4))  # no randomness: the same on every rank


def test_greedy_coreset_minimises_the_covering_radius_greedily() -> None:
    # k-centre greedy: every new point is the one farthest from those chosen, so the covering radius
    # after each step equals the distance of the next chosen point
    points = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    indices = greedy_coreset(points, 12)
    assert len(set(indices.tolist())) == 12
    for step in range(1, 12):
        radius = torch.cdist(points, points[indices[:step]]).min(dim=1).values
        assert radius.max() == pytest.approx(radius[indices[step]].item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"coreset size must be in \[1, 300\].*got 301"):
        greedy_coreset(points, 301)


def test_weighted_gmm_equals_the_unweighted_fit_on_repeated_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(30, 2, generator=generator), torch.randn(30, 2, generator=generator) + 6])
    counts = torch.randint(1, 4, (60,), generator=generator)
    init = data[[0, 59]]
    weighted = WeightedDiagGMM(2, tol=0.0, max_iter=20).fit(data, counts.float(), init)
    rows = data.repeat_interleave(counts, 0)
    repeated = WeightedDiagGMM(2, tol=0.0, max_iter=20).fit(rows, torch.ones(rows.shape[0]), init)
    assert torch.allclose(weighted.means, repeated.means, atol=1e-8)
    assert torch.allclose(weighted.variances, repeated.variances, atol=1e-8)
    assert torch.allclose(weighted.means.float(), torch.tensor([[0.0, 0.0], [6.0, 6.0]]), atol=0.5)


def test_gmm_recovers_two_separated_means() -> None:
    generator = torch.Generator().manual_seed(0)
    blob = 0.3 * torch.randn(1000, 2, generator=generator)
    data = torch.cat([blob[:500], blob[500:] + 5])
    gmm = WeightedDiagGMM(2).fit(data, torch.ones(1000), data[[0, 999]])
    means = gmm.means[gmm.means[:, 0].argsort()].float()
    assert torch.allclose(means, torch.tensor([[0.0, 0.0], [5.0, 5.0]]), atol=0.1)


def test_default_alpha_and_coreset_size() -> None:
    assert default_coreset_alpha(10) == pytest.approx(16 * (math.log(10) + 2))
    assert default_coreset_alpha(10) == pytest.approx(68.841, abs=1e-3)
    pool = torch.randn(1234, 4, generator=torch.Generator().manual_seed(0))
    coreset = ClusteringConfig(center_source="coreset")
    centres = build_centre_set(pool, 3, coreset, generator=torch.Generator().manual_seed(0))
    assert centres.shape[0] <= math.ceil(0.1 * 1234)  # duplicates removed from the 124 draws
    assert torch.unique(centres, dim=0).shape[0] == centres.shape[0]


def test_gmm_centre_set_has_n_components_rows() -> None:
    pool = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    assert build_centre_set(pool, 4, generator=torch.Generator().manual_seed(0)).shape == (4, 6)


def test_constant_pool_does_not_crash_the_clustering() -> None:
    centres = build_centre_set(torch.ones(200, 5), 3, generator=torch.Generator().manual_seed(0))
    assert centres.shape == (3, 5)
    assert torch.isfinite(centres).all()
