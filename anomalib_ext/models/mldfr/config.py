"""MLDFR's ablation groups: every paper ablation and spec assumption, each default written once.

The Lightning module exposes the knobs a user tunes as flat arguments; the rest lives in these small
frozen dataclasses (the shape of timm's ``ByoModelCfg``), which jsonargparse reads from YAML and the
command line (``--model.damage.num_squares 90``). ``A<n>`` cites the assumption of the spec
(``shared/methods/mldfr.md`` section 5); every default is the paper's reading.

Example:
    >>> from anomalib_ext.models import MLDFR
    >>> from anomalib_ext.models.mldfr.config import FeatureConfig, RestorerConfig
    >>> model = MLDFR(restorer=RestorerConfig(attention_type="none"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

DamageMode = Literal["blur", "mask", "white", "rgb", "cutpaste"]


def _check_choices(config: object) -> None:
    """Check every ``Literal`` field (and tuple of ``Literal``) of a group built in Python.

    The command line and YAML already reject a bad choice while parsing (jsonargparse reads the
    ``Literal``); this gives a Python caller the same message, written once for every group (each
    group's ``__post_init__``; a plain function, not a base class, so jsonargparse keeps treating the
    groups as plain dataclasses).
    """
    for name, hint in get_type_hints(type(config)).items():
        value = getattr(config, name)
        choices, values = hint, (value,)
        if get_origin(hint) is tuple and get_args(hint) and get_origin(get_args(hint)[0]) is Literal:
            choices, values = get_args(hint)[0], tuple(value)
        if get_origin(choices) is Literal and any(item not in get_args(choices) for item in values):
            msg = f"{type(config).__name__}.{name}={value!r} is invalid: accepted values are {get_args(choices)}."
            raise ValueError(msg)


@dataclass(frozen=True)
class FeatureConfig:
    """The frozen multilevel features (MLFF, paper section 3.2) and how images reach them.

    Args:
        cnn_pool: A4: 2x2 pooling that brings the CNN taps to the grid: ``"max"`` (paper) or ``"avg"``
            (public code).
        vit_input_block: A2: 1-based CaiT block of the damaged/test input side (paper 5).
        vit_target_block: A2: 1-based CaiT block of the intact target side (paper 15).
        deep_branch: A31: offline stand-in for CaiT: a shallow/deep block pair of the CNN stages after the
            last tap (not in the paper).
        deep_input_tap: A31: input-side block of the deep branch, in the stage right after the last tap
            (``"blocks.5.0"`` of EfficientNet-Lite).
        deep_target_tap: A31: target-side block of the deep branch, in the same stage or a later one
            (``"blocks.6.0"``, Lite's last block; the widths may differ).
        deep_upsample: A31: interpolation bringing the deep pair to the grid.
        feature_norm: A5: ``"none"`` (paper) or a parameter-free ``"layernorm"`` per token on both sides.
        normalize: A30: ImageNet normalisation inside the model (the damage works in [0, 1]).
        center_crop: A25: the default pre-processor resizes the short side and centre-crops (public code)
            instead of squashing (paper). Used only when ``pre_processor=True``.
        resize_interpolation: A7: interpolation of the default pre-processor's Resize. Used only when
            ``pre_processor=True``.
    """

    cnn_pool: Literal["max", "avg"] = "max"
    vit_input_block: int = 5
    vit_target_block: int = 15
    deep_branch: bool = False
    deep_input_tap: str = "blocks.5.0"
    deep_target_tap: str = "blocks.6.0"
    deep_upsample: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"
    feature_norm: Literal["none", "layernorm"] = "none"
    normalize: bool = True
    center_crop: bool = False
    resize_interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    __post_init__ = _check_choices


@dataclass(frozen=True)
class RestorerConfig:
    """The feature restorer FR (paper section 3.3, eqs. 2-3): ViT-style blocks with LayerScale.

    Args:
        num_blocks: Restoration blocks (paper 8).
        num_heads: A8: attention heads (must divide the restorer's width).
        mlp_ratio: A9: MLP width as a multiple of the token width.
        qkv_bias: A9: bias of the qkv projection.
        norm_eps: A9: LayerNorm epsilon.
        dropout: A9: dropout after attention and in the MLP.
        attention_type: A10: ``"standard"`` (the paper: ViT self-attention, "based on ViT" with only
            LayerScale taken from CaiT), ``"talking_heads"`` (the public code's CaiT attention; about twice
            the restorer's CPU cost) or ``"none"`` (Table IX "MLP").
        layer_scale: A11: diagonal gamma on the FFN branch (eq. 3; Table IX "Diag(gamma)").
        layer_scale_init: A12: gamma init.
        layer_scale_on_attention: A11: also scale the attention branch (CaiT's reading).
        pos_embed_init_std: A13: std of the learnable position encoding's trunc-normal init.
        final_norm: A14: LayerNorm after the last block.
        restorer_dim: A6: width of the blocks; ``None`` = the fused feature width (paper); an integer adds a
            Linear projection before and after the blocks (only to make CPU runs cheaper).
    """

    num_blocks: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    dropout: float = 0.0
    attention_type: Literal["standard", "talking_heads", "none"] = "standard"
    layer_scale: bool = True
    layer_scale_init: float = 1e-5
    layer_scale_on_attention: bool = False
    pos_embed_init_std: float = 0.02
    final_norm: bool = False
    restorer_dim: int | None = None

    __post_init__ = _check_choices


@dataclass(frozen=True)
class DamageConfig:
    """The training damage (paper section 3.1): small blurred, black or white squares.

    See :class:`anomalib_ext.augment.RandomPatchDamage`, which these fields configure.

    Args:
        num_squares: A15: squares per image (paper "about 180").
        side_fraction: A15: square side as a fraction of the input side (paper "about 1/24": 16 px at 384).
        placement: A16: ``"uniform"`` corners (overlaps allowed) or ``"grid"`` cells.
        modes: A17/A19: damage modes, one drawn per image (paper blur, mask, white).
        probability: A17: fraction of training images damaged.
        blur_sigma_fraction: A18: blur sigma as a fraction of the input side (9/384: the paper's "kernel 9").
        blur_scope: A18: blur each square's own pixels (``"square"``) or the whole image (``"image"``).
        mask_value: A19: fill of ``"mask"`` squares in [0, 1] space (black).
        white_value: A19: fill of ``"white"`` squares.
    """

    num_squares: int = 180
    side_fraction: float = 1 / 24
    placement: Literal["uniform", "grid"] = "uniform"
    modes: tuple[DamageMode, ...] = ("blur", "mask", "white")
    probability: float = 1.0
    blur_sigma_fraction: float = 9 / 384
    blur_scope: Literal["square", "image"] = "square"
    mask_value: float = 0.0
    white_value: float = 1.0

    __post_init__ = _check_choices


@dataclass(frozen=True)
class TrainingConfig:
    """Loss (eqs. 4-6) and optimiser details (paper section 4.1: Adam, StepLR).

    Args:
        loss_lambda: A21: weight of the cosine term (paper 140, eq. 6; Table X: 50-500 nearly equivalent).
        channel_reduction: A20: ``"mean"`` over channels (eqs. 4-5) or ``"sum"`` (public code).
        cosine_axis: A20: ``"spatial"`` (one cosine per channel, eq. 5) or ``"channel"`` (per token).
        use_mse: Table X: keep the MSE term.
        betas: A22: Adam betas.
        weight_decay: A22: Adam weight decay.
        lr_step_size: StepLR step in ``lr_step_interval`` units (paper 30 epochs).
        lr_gamma: StepLR decay factor (paper 0.8).
        lr_step_interval: A23: ``"epoch"`` (paper) or ``"step"`` (public code).
        min_steps: Train at least this many optimiser steps (0 = off, the paper's schedule is in epochs):
            where ``max_epochs`` gives fewer (a training set of a few dozen images), whole epochs are
            added until it is reached and an epoch-based ``lr_step_size`` is stretched by the same factor,
            so the lr still decays as often over the run. A ``max_steps`` of the trainer still stops first.

    Raises:
        ValueError: ``min_steps`` is negative.
    """

    loss_lambda: float = 140.0
    channel_reduction: Literal["mean", "sum"] = "mean"
    cosine_axis: Literal["spatial", "channel"] = "spatial"
    use_mse: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_step_size: int = 30
    lr_gamma: float = 0.8
    lr_step_interval: Literal["epoch", "step"] = "epoch"
    min_steps: int = 0

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.min_steps < 0:
            msg = f"training.min_steps={self.min_steps} is invalid: expected optimiser steps >= 0 (0 = off)."
            raise ValueError(msg)


@dataclass(frozen=True)
class AnomalyMapConfig:
    """The anomaly map and image score (paper section 3.4, eqs. 7-8); the smoothing ``sigma`` is flat.

    Args:
        score_against: A3: compare the restored features with the test image's ``"target"`` side (public
            code) or its ``"input"`` side (eqs. 7-8 read literally).
        channel_reduction: A26: ``"sum"`` (eq. 8) or ``"mean"`` of the squared error over channels.
        align_corners: A27: ``align_corners`` of the bilinear upsampling to the input size.
        score_mode: A29: image score from the smoothed map: ``"max"`` (public code), ``"mean"`` or ``"topk"``.
        topk_fraction: A29: fraction of the map's pixels averaged by ``"topk"``.
    """

    score_against: Literal["target", "input"] = "target"
    channel_reduction: Literal["sum", "mean"] = "sum"
    align_corners: bool = False
    score_mode: Literal["max", "mean", "topk"] = "max"
    topk_fraction: float = 0.01

    __post_init__ = _check_choices
