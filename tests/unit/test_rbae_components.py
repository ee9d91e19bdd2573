"""Shapes (spec section 3) and invariants (spec section 10) of the RB-AE components."""

import inspect
import math

import pytest
import torch

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.components import (
    FDM,
    FFM,
    RBAM,
    RBFRM,
    Decoder,
    Encoder,
    PerceptualNetwork,
    patchify,
    unpatchify,
)
from anomalib_ext.models.rbae.config import NetworkConfig
from anomalib_ext.models.rbae.torch_model import RbaeModel

SMALL = (8, 8, 16, 16, 16)


def test_encoder_levels_have_spec_shapes() -> None:
    """Level l has channels C_l and size H / 2^(l-1) (A3: level 1 at full resolution)."""
    h = 64
    feats = Encoder(SMALL)(torch.rand(2, 3, h, h))
    assert [tuple(f.shape) for f in feats] == [(2, c, h // 2 ** (i), h // 2 ** (i)) for i, c in enumerate(SMALL)]
    assert all((f >= 0).all() for f in feats)  # ReLU outputs


def test_default_encoder_widths_at_128() -> None:
    feats = Encoder()(torch.rand(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 128, 128),
        (128, 64, 64),
        (256, 32, 32),
        (512, 16, 16),
        (512, 8, 8),
    ]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_unpatchify_inverts_patchify_exactly(k: int) -> None:
    x = torch.randn(3, 5, 8, 12)
    patches = patchify(x, k)
    assert patches.shape == (3, (8 // k) * (12 // k), 5 * k * k)
    assert torch.equal(unpatchify(patches, 5, 8, 12, k), x)


def test_rbfrm_constant_reference_gives_that_patch_everywhere() -> None:
    b = torch.randn(1, 3, 2, 2).abs()
    ref = b.repeat(1, 1, 4, 4)  # every 2x2 reference patch equals b
    out = RBFRM(2, softmax_scale=7.0)(torch.randn(2, 3, 8, 8), ref)
    assert torch.allclose(out, b.repeat(2, 1, 4, 4), atol=1e-6)


def test_rbfrm_identity_with_large_scale_but_not_with_paper_scale() -> None:
    """A6: with scale 1e4 and ref == query the repair reproduces the input; with 1 it does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(RBFRM(2, softmax_scale=1e4)(x, x), x, atol=1e-4)
    assert (RBFRM(2, softmax_scale=1.0)(x, x) - x).abs().max() > 0.5


def _two_texture_reference(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Level-3 sized map at 256 px (64 x 64, K = 2: N = 1024 patches) of two ReLU-like textures A and B.

    Returns the reference map, the input map (the reference with patch 100, an A patch, replaced by
    A plus bright speckles: a defect), the texture vectors a, b and the defect's patch index.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, size, k = 16, 64, 2
    dim, n = channels * k * k, (size // k) ** 2
    a = torch.relu(torch.randn(dim, generator=generator))
    b = torch.relu(torch.randn(dim, generator=generator))
    is_a = torch.arange(n) % 2 == 0
    reference = torch.where(is_a[:, None], a, b) + 0.1 * torch.rand(n, dim, generator=generator)
    speckles = 2.0 * torch.rand(dim, generator=generator) * (torch.rand(dim, generator=generator) < 0.25)
    patches = reference.clone()
    patches[100] = a + speckles
    to_map = lambda p: unpatchify(p[None], channels, size, size, k)  # noqa: E731
    return to_map(reference), to_map(patches), a, b, 100


def test_rbfrm_default_scale_repairs_a_defect_patch_with_its_best_matching_texture() -> None:
    """Issue 15: the repaired defect patch takes the texture of its best-matching reference patches.

    With Eq. 4 literally (scale 1) cosine similarities in [0, 1] cannot separate the two textures:
    about 60 % of the weight goes to A, the repair is a blend of A and B. The default temperature
    (contextual attention's 10) puts > 95 % of the weight on A patches.
    """
    default = NetworkConfig().rbfrm_softmax_scale
    assert inspect.signature(RBAE.__init__).parameters["network"].default.rbfrm_softmax_scale == default
    assert default == 10.0
    reference, features, a, b, index = _two_texture_reference()
    is_a = torch.arange(1024) % 2 == 0
    for scale, selects in ((default, True), (1.0, False)):
        rbfrm = RBFRM(2, softmax_scale=scale)
        weight_on_a = rbfrm.attention(features, reference)[0, index][is_a].sum().item()
        repaired = patchify(rbfrm(features, reference), 2)[0, index]
        mean_a = patchify(reference, 2)[0, is_a].mean(0)
        gap = (a - b).norm().item()
        if selects:
            assert weight_on_a > 0.95, (scale, weight_on_a)
            assert (repaired - mean_a).norm().item() < 0.1 * gap
        else:
            assert weight_on_a < 0.7, (scale, weight_on_a)
            assert (repaired - mean_a).norm().item() > 0.25 * gap


def test_rbfrm_learned_scale_starts_at_the_given_value_and_gets_a_gradient() -> None:
    rbfrm = RBFRM(2, softmax_scale=10.0, learn_scale=True)
    assert isinstance(rbfrm.log_scale, torch.nn.Parameter)
    assert rbfrm.softmax_scale.item() == pytest.approx(10.0)
    reference, features, *_ = _two_texture_reference()
    rbfrm(features, reference).square().sum().backward()
    assert rbfrm.log_scale.grad is not None
    assert rbfrm.log_scale.grad.abs() > 0
    assert "log_scale" not in RBFRM(2, softmax_scale=10.0).state_dict()  # fixed: nothing to store


def test_rbfrm_hand_example() -> None:
    """Spec section 10 item 9 (K=1, C=1, 2x2 maps, scale 1)."""
    query = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    ref = torch.tensor([[[[1.0, 2.0], [-1.0, 3.0]]]])
    e = math.e
    pos = (6 * e - 1 / e) / (3 * e + 1 / e)
    neg = (6 / e - e) / (3 / e + e)
    expected = torch.tensor([[[[pos, neg], [pos, 1.25]]]])
    out = RBFRM(1)(query, ref)
    assert torch.allclose(out, expected, atol=1e-6)
    assert abs(pos - 1.870506) < 1e-6
    assert abs(neg + 0.133704) < 1e-6


def test_rbfrm_zero_reference_is_finite_zero() -> None:
    out = RBFRM(2)(torch.rand(2, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))


def test_ffm_identical_branches_return_them_and_weights_sum_to_one() -> None:
    ffm = FFM(6, mid_channels=4, kernel_size=5).eval()
    x = torch.randn(2, 6, 8, 8)
    assert torch.allclose(ffm([x, x, x]), x, atol=1e-6)
    weights = ffm.attention_maps([x, torch.randn_like(x), torch.randn_like(x)])
    assert weights.shape == (3, 2, 6, 8, 8)
    assert torch.allclose(weights.sum(0), torch.ones(2, 6, 8, 8), atol=1e-6)


def test_rbam_keeps_shape() -> None:
    f = torch.rand(2, 16, 16, 16)
    assert RBAM(16, mid_channels=8)(f, torch.rand(1, 16, 16, 16)).shape == f.shape


def test_decoder_and_fdm_shapes() -> None:
    h = 64
    feats = Encoder(SMALL)(torch.rand(2, 3, h, h))
    rec = Decoder(SMALL)(feats[2], feats[3], feats[4])
    assert rec.shape == (2, 3, h, h)
    assert rec.min() >= 0
    assert rec.max() <= 1
    for level in (1, 2, 3):
        c = SMALL[level - 1]
        logits = FDM(c)(feats[level - 1], feats[level - 1])
        assert logits.shape == (2, 2, h // 2 ** (level - 1), h // 2 ** (level - 1))


def test_model_eval_output_and_score_is_map_max() -> None:
    model = RbaeModel(input_size=(64, 64), network=NetworkConfig(encoder_channels=SMALL, ffm_mid_channels=8)).eval()
    out = model(torch.rand(3, 3, 64, 64))
    assert out.pred_score.shape == (3,)
    assert out.anomaly_map.shape == (3, 1, 64, 64)
    assert torch.equal(out.pred_score, out.anomaly_map.amax(dim=(-3, -2, -1)))
    assert torch.isfinite(out.anomaly_map).all()  # zero reference before phase 2 (T12)
    assert out.anomaly_map.min() >= 0
    assert out.anomaly_map.max() <= 1


def test_eq11_constant_maps_give_the_constant() -> None:
    model = RbaeModel(input_size=(64, 64), network=NetworkConfig(encoder_channels=SMALL))
    c = 0.3
    logit1 = math.log(c / (1 - c))
    logits = [torch.tensor([0.0, logit1]).view(1, 2, 1, 1).expand(1, 2, s, s) for s in (64, 32, 16)]
    am = model.anomaly_map(logits, (64, 64))
    assert am.shape == (1, 1, 64, 64)
    assert torch.allclose(am, torch.full_like(am, c), atol=1e-6)
    assert sum(model.am_weights) == pytest.approx(1.0)


def test_eq11_weights_each_level_with_its_own_lambda() -> None:
    """Distinct P(anomalous) per level (0.1, 0.3, 0.9) and the paper's lambdas (0.2, 0.2, 0.6): 0.62, not 0.30."""
    model = RbaeModel(input_size=(64, 64), network=NetworkConfig(encoder_channels=SMALL))
    probabilities = (0.1, 0.3, 0.9)
    logits = [
        torch.tensor([0.0, math.log(p / (1 - p))]).view(1, 2, 1, 1).expand(1, 2, s, s)
        for p, s in zip(probabilities, (64, 32, 16), strict=True)
    ]
    am = model.anomaly_map(logits, (64, 64))
    assert model.am_weights == (0.2, 0.2, 0.6)
    assert torch.allclose(am, torch.full_like(am, 0.2 * 0.1 + 0.2 * 0.3 + 0.6 * 0.9), atol=1e-6)


def test_input_size_not_divisible_by_64_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible by 64"):
        RbaeModel(input_size=(250, 250))


def test_reference_buffers_in_state_dict_and_set_in_eval_mode() -> None:
    model = RbaeModel(input_size=(64, 64), network=NetworkConfig(encoder_channels=SMALL, ffm_mid_channels=8))
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if k.startswith("ref_")}
    assert shapes == {
        "ref_image": (1, 3, 64, 64),
        "ref_feat_3": (1, 16, 16, 16),
        "ref_feat_4": (1, 16, 8, 8),
        "ref_feat_5": (1, 16, 4, 4),
        "ref_ready": (),
    }
    model.train()
    model(torch.rand(4, 3, 64, 64), clean_images=torch.rand(4, 3, 64, 64), phase=1)  # moves BN stats
    ref = torch.rand(1, 3, 64, 64)
    model.set_reference(ref)
    feats = model.encoder.eval()(ref)
    assert torch.equal(model.ref_image, ref)
    for level in (3, 4, 5):
        assert torch.equal(getattr(model, f"ref_feat_{level}"), feats[level - 1])
    assert bool(model.ref_ready)
    model.train()
    assert not model.encoder.training
    assert model.decoder.training


def test_perceptual_lite0_taps_shapes() -> None:
    net = PerceptualNetwork("efficientnet_lite0", (0, 1, 2, 3, 4), pre_trained=False)
    taps = net(torch.rand(1, 3, 64, 64))
    assert [tuple(t.shape[1:]) for t in taps] == [
        (16, 32, 32),
        (24, 16, 16),
        (40, 8, 8),
        (112, 4, 4),
        (320, 2, 2),
    ]
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training


def test_perceptual_vgg_taps_are_the_first_five_relus() -> None:
    """A21: relu1_1, relu1_2, relu2_1, relu2_2, relu3_1 (features 1, 3, 6, 8, 11), not timm's taps."""
    net = PerceptualNetwork("vgg16", (1, 3, 6, 8, 11), pre_trained=False)
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    taps = net(image)
    assert [tuple(t.shape[1:]) for t in taps] == [
        (64, 32, 32),
        (64, 32, 32),
        (128, 16, 16),
        (128, 16, 16),
        (256, 8, 8),
    ]
    assert len(net.net) == 12
    assert all(isinstance(net.net[i], torch.nn.ReLU) for i in (1, 3, 6, 8, 11))
    sum(t.mean() for t in taps).backward()
    assert image.grad is not None
    assert image.grad.abs().sum() > 0
