"""Unit tests of SMCC's torch model and Lightning module: memory bank, scoring, buffers (spec section 10)."""

from __future__ import annotations

import dataclasses
import inspect
import io

import pytest
import torch
from torch import nn

from anomalib_ext.models.smcc import SMCC
from anomalib_ext.models.smcc.centres import greedy_coreset
from anomalib_ext.models.smcc.config import ClusteringConfig, FeatureConfig, ScoringConfig, TrainingConfig
from anomalib_ext.models.smcc.loss import SmccLoss
from anomalib_ext.models.smcc.torch_model import SmccModel

LITE0_LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


def tiny_model(**kwargs: object) -> SmccModel:
    """Lite0 fused at stride 8 with random weights; ``kwargs`` are fields of the feature and scoring groups."""
    torch.manual_seed(0)
    feature_fields = set(FeatureConfig.__dataclass_fields__)
    features = FeatureConfig(**{"fusion_layer_index": 1} | {k: v for k, v in kwargs.items() if k in feature_fields})
    scoring = ScoringConfig(**{"sigma": 2.0} | {k: v for k, v in kwargs.items() if k not in feature_fields})
    return SmccModel("efficientnet_lite0", LITE0_LAYERS, pre_trained=False, features=features, scoring=scoring)


# ---------------------------------------------------------------------------- memory bank (items 16-20)
def test_full_batch_replaces_the_bank_with_its_detached_patches() -> None:
    model = tiny_model()
    images = torch.rand(3, 3, 32, 32)
    patches = model.to_patches(model(images))
    assert model.update_memory(patches, images, n_images=2)
    per_image = 4 * 4  # 32 px at stride 8
    assert model.memory_bank.shape == (2 * per_image, 496)
    assert not model.memory_bank.requires_grad
    assert torch.equal(model.memory_bank, patches[: 2 * per_image].detach())
    assert torch.equal(model.bank_images, images[:2])


def test_short_batch_leaves_the_bank_unchanged() -> None:
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    model.update_memory(model.to_patches(model(images)), images, n_images=2)
    before = model.memory_bank.clone()
    short = torch.rand(1, 3, 32, 32)
    assert not model.update_memory(model.to_patches(model(short)), short, n_images=2)
    assert torch.equal(model.memory_bank, before)


def test_a_bank_larger_than_a_batch_keeps_the_latest_images() -> None:
    model = tiny_model()
    batches = [torch.rand(2, 3, 32, 32) for _ in range(3)]
    patches = [model.to_patches(model(images)) for images in batches]
    for images, batch_patches in zip(batches, patches, strict=True):
        assert model.update_memory(batch_patches, images, n_images=3, span_batches=True)
    per_image = 4 * 4
    assert torch.equal(model.bank_images, torch.cat([batches[1][1:], batches[2]]))
    assert torch.equal(model.memory_bank, torch.cat([patches[1][per_image:], patches[2]]).detach())
    short = torch.rand(1, 3, 32, 32)  # a short batch joins too: the bank stays 3 whole images
    model.update_memory(model.to_patches(model(short)), short, n_images=3, span_batches=True)
    assert torch.equal(model.bank_images, torch.cat([batches[2], short]))
    assert model.memory_bank.shape == (3 * per_image, 496)


def test_refresh_re_embeds_the_bank_images_in_eval_mode() -> None:
    model = tiny_model()
    images = torch.rand(2, 3, 32, 32)
    model.set_memory(torch.zeros(5, 496), images)
    model.refresh_memory()
    with torch.no_grad():
        expected = model.to_patches(model.eval().embed(images))
    assert torch.allclose(model.memory_bank, expected)
    assert not model.bank_stale


def test_refresh_with_coreset_ratio_keeps_a_greedy_coreset_of_the_bank() -> None:
    model = tiny_model(coreset_ratio=0.25)
    images = torch.rand(2, 3, 32, 32)  # 2 x 16 patches at stride 8
    model.set_memory(torch.zeros(5, 496), images)
    model.refresh_memory()
    with torch.no_grad():
        full = model.to_patches(model.eval().embed(images))
    assert torch.equal(model.memory_bank, full[greedy_coreset(full, 8)])
    assert torch.equal(model.bank_images, images)  # the next refresh starts again from every patch
    with pytest.raises(ValueError, match=r"coreset_ratio=0\.0 is invalid"):
        ScoringConfig(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="needs refresh_bank=True"):
        ScoringConfig(coreset_ratio=0.1, refresh_bank=False)


def test_batchnorm_statistics_stay_frozen_while_the_backbone_adapts() -> None:
    model = tiny_model().train()
    centres = torch.randn(3, 496)
    norms = {name: buf.clone() for name, buf in model.named_buffers() if "running" in name or "num_batches" in name}
    weights_before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss, _ = SmccLoss()(model.to_patches(model(torch.rand(2, 3, 32, 32))), centres)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert norms
    for name, buffer in model.named_buffers():
        if name in norms:
            assert torch.equal(buffer, norms[name]), name
    assert any(not torch.equal(a, b.detach()) for a, b in zip(weights_before, model.parameters(), strict=True))
    assert all(not m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_trainable_scope_and_bn_affine_keys_freeze_parameters() -> None:
    model = tiny_model(trainable_scope=("blocks.6",), train_bn_affine=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("blocks.6" in name and ".bn" not in name for name in trainable)


# ---------------------------------------------------------------------------- scoring (items 21-25)
@pytest.mark.parametrize(("k", "expected"), [(1, 0.0), (2, 0.5), (3, 1.0)])
def test_knn_score_is_the_mean_of_the_k_smallest_distances(k: int, expected: float) -> None:
    model = tiny_model(num_neighbors=k)
    model.memory_bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert model.nearest_distances(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(expected, abs=1e-6)


def test_chunked_knn_equals_unchunked() -> None:
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(1000, 16, generator=generator), torch.randn(50, 16, generator=generator)
    whole, chunked = tiny_model(knn_chunk_size=4096), tiny_model(knn_chunk_size=77)
    whole.memory_bank = chunked.memory_bank = bank
    assert torch.allclose(whole.nearest_distances(queries), chunked.nearest_distances(queries), rtol=1e-5)


def test_knn_equals_the_mean_of_the_k_smallest_cdist_distances() -> None:
    generator = torch.Generator().manual_seed(1)
    bank, queries = 3 + torch.randn(500, 32, generator=generator), 3 + torch.randn(40, 32, generator=generator)
    model = tiny_model(num_neighbors=3, knn_chunk_size=128)
    model.memory_bank = bank
    expected = torch.cdist(queries.double(), bank.double()).topk(3, dim=1, largest=False).values.mean(dim=1)
    assert torch.allclose(model.nearest_distances(queries).double(), expected, rtol=1e-4)


def test_scoring_the_bank_images_gives_near_zero_with_k1() -> None:
    model = tiny_model(num_neighbors=1).double()
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        model.memory_bank = model.to_patches(model.embed(images))
        scores = model.nearest_distances(model.memory_bank.clone())
    assert scores.abs().max().item() < 1e-4


def test_constant_patch_scores_give_a_constant_map_and_score(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(sigma=4.0).eval()
    model.memory_bank = torch.zeros(4, 496)
    monkeypatch.setattr(model, "nearest_distances", lambda queries: torch.full((queries.shape[0],), 2.5))
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 64))
    assert torch.allclose(output.anomaly_map, torch.full_like(output.anomaly_map, 2.5), atol=1e-6)
    assert torch.allclose(output.pred_score, torch.full((2,), 2.5), atol=1e-6)


def test_gaussian_sigma_4_uses_a_33_pixel_kernel() -> None:
    assert tiny_model(sigma=4.0).scorer.blur.kernel.shape[-1] == 33  # the 1-D kernel of the separable blur


@pytest.mark.parametrize("image_score", ["max", "max_patch", "topk_mean"])
def test_image_score_variants_are_bounded_by_the_map(image_score: str) -> None:
    model = tiny_model(image_score=image_score)
    images = torch.rand(2, 3, 32, 32)
    model.set_memory(model.to_patches(model(torch.rand(2, 3, 32, 32))), images)
    with torch.no_grad():
        output = model.eval()(images)
    assert output.pred_score.shape == (2,)
    if image_score != "max_patch":
        assert (output.pred_score <= output.anomaly_map.flatten(1).amax(1) + 1e-6).all()


# ---------------------------------------------------------------------------- buffers, module, paper numbers
def test_data_built_state_is_in_persistent_buffers() -> None:
    state = tiny_model().state_dict()
    assert {"centres", "memory_bank", "centres_fitted"} <= set(state)
    assert "bank_images" not in state


def test_buffers_of_any_size_load_into_a_fresh_model() -> None:
    trained = tiny_model()
    trained.centres = torch.randn(3, 496)
    trained.memory_bank = torch.randn(32, 496)
    trained.centres_fitted = torch.tensor(True)
    fresh = tiny_model()
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.centres, trained.centres)
    assert torch.equal(fresh.memory_bank, trained.memory_bank)
    assert bool(fresh.centres_fitted)


def test_lightning_module_validates_its_keys() -> None:
    with pytest.raises(ValueError, match="n_components"):
        SMCC(backbone="efficientnet_lite0", layers=LITE0_LAYERS, pre_trained=False, n_components=1)
    with pytest.raises(ValueError, match=r"center_source.*gmm_means"):
        ClusteringConfig(center_source="means")
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainingConfig(lr_scheduler="step")
    with pytest.raises(ValueError, match="sampling_rate"):
        ClusteringConfig(sampling_rate=0.0)
    assert TrainingConfig(lr_scheduler="cosine").lr_scheduler == "cosine"
    assert FeatureConfig(trainable_scope="blocks.6").trainable_scope == "blocks.6"


def test_lightning_module_defaults_follow_the_paper() -> None:
    model = SMCC(backbone="efficientnet_lite0", layers=LITE0_LAYERS, pre_trained=False)
    assert model.input_size == (224, 224)
    assert model.trainer_arguments == {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
    assert model.hparams.n_components == 10
    assert model.hparams.clustering.sampling_rate == 0.1
    assert model.hparams.memory_bank_images == 16
    assert (model.hparams.lr, model.hparams.training.weight_decay) == (1e-3, 5e-4)
    assert model.hparams.backbone == "efficientnet_lite0"
    assert inspect.signature(SMCC).parameters["backbone"].default == "wide_resnet50_2.tv_in1k"
    assert model.model.fusion.target_index == 0
    assert model.model.num_neighbors == 3
    assert model.model.scorer.sigma == 4.0
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["weight_decay"] == 5e-4


def test_lightning_module_has_at_most_15_arguments() -> None:
    assert len(inspect.signature(SMCC).parameters) <= 15


def test_groups_reach_the_modules_they_configure() -> None:
    model = SMCC(
        backbone="efficientnet_lite0",
        layers=LITE0_LAYERS,
        pre_trained=False,
        image_size=(64, 64),
        features=FeatureConfig(fusion_layer_index=1, aggregation_kernel=3),
        clustering=ClusteringConfig(seed=5, center_source="coreset"),
        training=TrainingConfig(optimizer="adamw", weight_decay=0.01, loss_reduction="sum", lambda_o=0.5),
        scoring=ScoringConfig(num_neighbors=5, sigma=2.0, image_score="topk_mean", refresh_bank=False),
    )
    assert model.input_size == (64, 64)
    assert model.model.fusion.target_index == 1
    assert isinstance(model.model.fusion.aggregation, nn.AvgPool2d)
    assert model.clustering.seed == 5
    assert (model.loss.reduction, model.loss.lambda_o) == ("sum", 0.5)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["weight_decay"] == 0.01
    assert (model.model.num_neighbors, model.model.image_score, model.model.scorer.sigma) == (5, "topk_mean", 2.0)
    assert not model.refresh_memory_bank


def test_checkpoint_safe_globals_cover_the_saved_hyperparameters() -> None:
    model = SMCC(backbone="efficientnet_lite0", layers=LITE0_LAYERS, pre_trained=False)
    safe = set(SMCC.checkpoint_safe_globals())
    groups = [value for value in model.hparams.values() if dataclasses.is_dataclass(value)]
    assert len(groups) == 4
    assert {type(value) for value in groups} <= safe
    buffer = io.BytesIO()
    torch.save(dict(model.hparams), buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals(list(safe)):
        loaded = torch.load(buffer, weights_only=True)
    assert loaded["clustering"] == model.hparams.clustering


def test_paper_memory_bank_size() -> None:
    # section 10 item 32: 16 images x 56 x 56 patches x 3840 channels (layers 1-4), fp32
    assert 16 * 56 * 56 * 3840 == 192_675_840
    assert pytest.approx(343.0, abs=0.05) == 16 * 56 * 56 * 1792 * 4 / 2**20  # layers 1-3: Table VII's "344 M"


def test_every_trainable_parameter_gets_a_gradient() -> None:
    # timm's EfficientNet would run all blocks even when only early ones are tapped: they are removed
    model = SmccModel("efficientnet_lite0", ["blocks.1", "blocks.2"], pre_trained=False).train()
    loss, _ = SmccLoss()(model.to_patches(model(torch.rand(2, 3, 32, 32))), torch.randn(3, 64))
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert len(model.feature_extractor.feature_extractor.blocks) == 3


def test_bank_refresh_under_ddp_embeds_every_ranks_images_in_rank_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks: the bank is rebuilt from the gathered union (rank 0's images, then rank 1's), T18."""
    from tests.helpers.tiny import build

    model = build("SMCC", memory_bank_images=4)
    monkeypatch.setattr(SMCC, "_world_size", property(lambda self: 2))
    local = torch.rand(2, 3, 64, 64)
    other_rank = torch.rand(2, 3, 64, 64)
    monkeypatch.setattr(model, "all_gather", lambda tensor: torch.stack([tensor, other_rank]))
    refreshed: list[torch.Tensor] = []
    monkeypatch.setattr(model.model, "refresh_memory", refreshed.append)
    model.model.bank_images = local
    model.model.bank_stale = True
    model._refresh_bank()
    assert len(refreshed) == 1
    assert torch.equal(refreshed[0], torch.cat([local, other_rank]))
