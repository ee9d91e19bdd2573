"""RB-AE's ablation groups: every spec assumption and paper ablation, each default written once.

The Lightning module exposes the paper's stated settings as flat arguments (phase split, Adam,
anomaly source, perceptual network); the rest lives in these small frozen dataclasses (the shape of
timm's ``ByoModelCfg``), which jsonargparse reads from YAML and the command line
(``--model.phase2.w_seg 2``, ``--model.network.rbfrm_softmax_scale 1``). ``A<n>`` cites the
assumption of the spec (``shared/methods/rbae.md`` section 5).

Example:
    >>> from anomalib_ext.models import RBAE
    >>> from anomalib_ext.models.rbae.config import NetworkConfig, Phase2Config
    >>> model = RBAE(network=NetworkConfig(rbfrm_softmax_scale=1.0), phase2=Phase2Config(w_seg=2.0))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anomalib_ext.models.components import ScoreModeName

__all__ = ["DefectConfig", "NetworkConfig", "Phase1Config", "Phase2Config"]


@dataclass(frozen=True)
class NetworkConfig:
    """The network (paper section III-C/D) and its inference map (Eq. 11).

    Args:
        encoder_channels: A2: channels of the five encoder levels (strides 1, 2, 2, 2, 2, A3).
        rbfrm_patch_sizes: RBFRM patch sizes K (paper: 2 and 4).
        rbfrm_softmax_scale: A6: softmax temperature of the RBFRM similarities. Paper Eq. 4: 1,
            with which no reference patch gets more than ``e / (e + N - 1)`` of the weight (the
            repair is the mean reference patch); contextual attention, cited by the paper: 10
            (the default, issue 15).
        rbfrm_learn_scale: A6: learn the RBFRM temperatures, starting from ``rbfrm_softmax_scale``.
        rbfrm_eps: A7: epsilon of the cosine-similarity normalisation.
        ffm_mid_channels: FFM squeeze channels (paper: 64).
        ffm_kernel_size: FFM kernel m (paper: 5).
        ffm_squeeze_norm: A8: BN + ReLU after the FFM squeeze.
        decoder_out_activation: A5: ``"sigmoid"`` (reconstruction in [0, 1]) or ``"none"``.
        fdm_hidden_ratios: A9: FDM hidden widths as fractions of the level channels.
        am_weights: lambda_1..3 of Eq. 11 (paper: 0.2, 0.2, 0.6).
        am_align_corners: A10: ``align_corners`` of the bilinear upsampling ``g``.
        sigma: A12: Gaussian smoothing of the map, in pixels (0: none).
        score_mode: A11: image score from the map (``max``, ``mean``, ``topk``).
        score_pool_size: A11: average-pool size applied to the map before the score (0: none).
    """

    encoder_channels: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    rbfrm_patch_sizes: tuple[int, ...] = (2, 4)
    rbfrm_softmax_scale: float = 10.0
    rbfrm_learn_scale: bool = False
    rbfrm_eps: float = 1e-12
    ffm_mid_channels: int = 64
    ffm_kernel_size: int = 5
    ffm_squeeze_norm: bool = True
    decoder_out_activation: Literal["sigmoid", "none"] = "sigmoid"
    fdm_hidden_ratios: tuple[float, float] = (1.0, 0.5)
    am_weights: tuple[float, float, float] = (0.2, 0.2, 0.6)
    am_align_corners: bool = False
    sigma: float = 0.0
    score_mode: ScoreModeName = "max"
    score_pool_size: int = 0


@dataclass(frozen=True)
class DefectConfig:
    """The synthetic defects of both phases (paper section III-B, Eq. 1).

    Args:
        texture_source: A14: ``"auto"`` (the ``anomaly_source_path`` folder if given, else
            ``"noise"``), ``"folder"`` (``anomaly_source_path`` required, the paper config),
            ``"batch"`` or ``"noise"`` (see :class:`~anomalib_ext.augment.PerlinTextureAnomaly`).
        augment_texture: A14: 3 random DRAEM ops on every texture.
        rotation_range: A13: rotation range of the Perlin noise in degrees.
        dual_mask: A13: union of two Perlin masks (default: single mask).
        blend_factor: A15: beta of the paste (1.0 = Eq. 1, hard replacement).
        mask_resize_mode: A17: interpolation of the mask to the feature levels (``area``: soft coverage).
        seed: Base seed of the defect generator; rank ``r`` uses ``seed + r``. ``None``: the seed
            ``seed_everything`` set, as the package's other models.
    """

    texture_source: Literal["auto", "folder", "batch", "noise"] = "auto"
    augment_texture: bool = True
    rotation_range: tuple[float, float] = (-90.0, 90.0)
    dual_mask: bool = False
    blend_factor: float = 1.0
    mask_resize_mode: Literal["area", "nearest", "bilinear"] = "area"
    seed: int | None = 0


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser and schedule details of both phases (``lr`` and ``phase1_fraction`` stay flat).

    Args:
        weight_decay: Adam (coupled L2) weight decay (paper: 1e-5).
        min_steps: train at least this many optimiser steps (0 = off; the paper counts epochs). Where
            ``max_epochs`` gives fewer (a training set of a few dozen images), whole epochs are added
            before the phases are split; a run that validated every ``n`` epochs and at its end
            validates as often over the longer run, and still at its end. A ``max_steps`` of the trainer
            still stops first. Not with ``phase1.epochs``/``phase2.epochs``, which fix the schedule.

    Raises:
        ValueError: ``min_steps`` is negative.
    """

    weight_decay: float = 1e-5
    min_steps: int = 0

    def __post_init__(self) -> None:
        if self.min_steps < 0:
            msg = f"training.min_steps={self.min_steps} is invalid: expected optimiser steps >= 0 (0 = off)."
            raise ValueError(msg)


@dataclass(frozen=True)
class Phase1Config:
    """Phase 1, encoder + decoder (Eq. 14: ``w_rec L_rec + w_per L_per + w_pixel_dis L_pixel_dis``).

    Args:
        epochs: paper-literal alternative to ``phase1_fraction``: epochs of phase 1 (paper: 400).
            Set together with ``phase2.epochs``; the trainer must then run exactly their sum.
        w_rec: weight of ``L_rec^1`` (paper: 100).
        w_per: weight of ``L_per^1`` (paper: 1).
        w_pixel_dis: weight of ``L_pixel_dis`` (paper: 1).
        anomaly_probability: A16: probability of a defect per image.
        pixel_dis_levels: encoder levels of Eq. 2 (paper: L = 5, all).
        pixel_dis_norm: A18: ``"minmax"`` or ``"max"`` normalisation of the residual map.
        pixel_dis_eps: A18: epsilon of that normalisation.
        pixel_dis_detach_clean: A20: detach the clean features in Eq. 2.
    """

    epochs: int | None = None
    w_rec: float = 100.0
    w_per: float = 1.0
    w_pixel_dis: float = 1.0
    anomaly_probability: float = 1.0
    pixel_dis_levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    pixel_dis_norm: Literal["minmax", "max"] = "minmax"
    pixel_dis_eps: float = 1e-8
    pixel_dis_detach_clean: bool = False


@dataclass(frozen=True)
class Phase2Config:
    """Phase 2, RBAM + decoder + MSFDM on a frozen encoder.

    Eq. 17: ``w_rec L_rec + w_per L_per + w_fea_rep L_fea_rep + w_seg L_seg``.

    Args:
        epochs: epochs of phase 2 with ``phase1.epochs`` (paper: 200).
        w_rec: weight of ``L_rec^2`` (paper: 100).
        w_per: weight of ``L_per^2`` (paper: 1).
        w_fea_rep: weight of ``L_fea_rep`` (paper: 1).
        w_seg: weight of ``L_seg`` (paper: 1).
        anomaly_probability: A16: probability of a defect per image.
        fea_rep_denominator: A23: denominator of Eq. 9 (literal ``l2 - l1 = 2``; 3 is a true mean).
        focal_gamma: A24: focal loss gamma.
        focal_alpha: A24: focal loss alpha (``None``: no class weighting).
        detach_rec_for_seg: A25: stop ``L_seg`` gradients at the reconstruction.
        freeze_encoder_bn: A26: keep the encoder in eval (frozen BN statistics).
        reset_optimizer: A27: a fresh Adam for phase 2 (else one Adam for both phases).
        reference_selection: A28: ``"index"`` (the training image ``reference_index`` in path
            order) or ``"random"`` (path order after hashing with ``reference_seed``). Chosen among
            the images of the training batches seen before phase 2 (all of them once phase 1 lasts
            an epoch), before any synthetic defect; rank 0's choice under DDP.
        reference_index: A28: index of the reference image in that order.
        reference_seed: A28: seed of ``"random"`` selection.
    """

    epochs: int | None = None
    w_rec: float = 100.0
    w_per: float = 1.0
    w_fea_rep: float = 1.0
    w_seg: float = 1.0
    anomaly_probability: float = 1.0
    fea_rep_denominator: float = 2.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    detach_rec_for_seg: bool = False
    freeze_encoder_bn: bool = True
    reset_optimizer: bool = True
    reference_selection: Literal["index", "random"] = "index"
    reference_index: int = 0
    reference_seed: int = 0
