"""FMGRD's ablation groups: every paper ablation and spec assumption, each default written once.

The Lightning module exposes the knobs a user tunes as flat arguments; the rest lives in these small
frozen dataclasses (the shape of timm's ``ByoModelCfg``), which jsonargparse reads from YAML and the
command line (``--model.fmm.eval_mode expectation``). ``A<n>`` cites the assumption of the spec
(``shared/methods/fmgrd.md`` section 5).

Example:
    >>> from anomalib_ext.models import FMGRD
    >>> from anomalib_ext.models.fmgrd.config import AttentionConfig, BottleneckConfig
    >>> model = FMGRD(bottleneck=BottleneckConfig(attention=AttentionConfig(use_simam=False)))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from anomalib_ext.models.components.scoring import ScoreModeName


@dataclass(frozen=True)
class AttentionConfig:
    """SCSAtt (paper section 3.4): SCConv (SRU, CRU), a 1x1 conv, SimAM.

    Args:
        use_scconv: SCConv in SCSAtt (Table 6 ablation).
        use_simam: SimAM in SCSAtt (Table 6 ablation).
        pointwise: A3: the 1x1 conv + BN + ReLU between SCConv and SimAM.
        residual: A3: a residual connection around SCSAtt.
        sru_group_num: A4: GroupNorm groups of the SRU.
        sru_gate_threshold: SRU gate threshold (eq. 4).
        sru_gate_mode: A4: the reference code's differentiable ``"soft"`` gate, or the paper's literal
            ``"hard"`` gate (which gives the GroupNorm no gradient and breaks DDP).
        cru_alpha: CRU split ratio (paper: halves).
        cru_squeeze_ratio: A5: CRU squeeze ratio.
        cru_groups: A5: groups of the CRU group-wise conv.
        cru_kernel_size: A5: kernel of the CRU group-wise conv.
        cru_softmax: A5: ``"branch"`` (eq. 7, per channel over the two branches) or ``"reference"``.
        simam_lambda: A6: SimAM lambda.
    """

    use_scconv: bool = True
    use_simam: bool = True
    pointwise: bool = True
    residual: bool = False
    sru_group_num: int = 4
    sru_gate_threshold: float = 0.5
    sru_gate_mode: Literal["soft", "hard"] = "soft"
    cru_alpha: float = 0.5
    cru_squeeze_ratio: int = 2
    cru_groups: int = 2
    cru_kernel_size: int = 3
    cru_softmax: Literal["branch", "reference"] = "branch"
    simam_lambda: float = 1e-4


@dataclass(frozen=True)
class BottleneckConfig:
    """MSFF, SCSAtt and the one-class embedding (OCE) between teacher and student.

    Args:
        fusion_channels: A2: output channels of MSFF's 1x1 fuse conv; ``None`` = the teacher's deepest
            tapped width (C3), ``0`` = no fuse conv (RD).
        fusion_levels: A2: teacher levels fused by MSFF (Table 7 ablation).
        attention: SCSAtt settings.
        oce_num_blocks: A7: OCE blocks; ``None`` = 3 bottlenecks (2 basic blocks for ResNet-18/34 and
            non-ResNet teachers).
        oce_width_per_group: A7: OCE bottleneck width; ``None`` = 128 for wide_resnet*, else 64.
        oce_out_channels: Channels of ``F_B``; ``None`` = the teacher's stride-32 stage width.
        decoder_blocks: Blocks per stage of the mirrored student for non-ResNet teachers (ResNets use
            anomalib's ``get_decoder``).
        conv_init: A16: RD's OCBE initialisation (``"kaiming_fan_out"``) or PyTorch's ``"default"``.
    """

    fusion_channels: int | None = None
    fusion_levels: tuple[int, ...] = (0, 1, 2)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    oce_num_blocks: int | None = None
    oce_width_per_group: int | None = None
    oce_out_channels: int | None = None
    decoder_blocks: tuple[int, int, int] = (2, 2, 2)
    conv_init: Literal["kaiming_fan_out", "default"] = "kaiming_fan_out"


@dataclass(frozen=True)
class FMMConfig:
    """Feature mask generation modules (paper section 3.7), one per student level.

    Args:
        enabled: A17: the FMMs (Table 5 ablation); off, the map compares the teacher with the student.
        align: A8: the 1x1 ``f_align`` conv.
        hidden_channels: A8: channels between the two 3x3 generator convs; ``None`` = the level's.
        inline: A8: feed ``F_G`` instead of ``F_D`` into the next decoder stage (default: side branch).
        mask_mode: A9: ``"spatial"`` ``(B, 1, H, W)`` mask (eq. 11) or ``"channel"`` ``(B, C, 1, 1)``.
        eval_mode: A10: the FMM at test time: ``"unmasked"``, ``"expectation"`` (inputs scaled by
            ``1 - mask_ratio``) or ``"random"`` (the training mask; not deterministic, not exportable).
    """

    enabled: bool = True
    align: bool = True
    hidden_channels: int | None = None
    inline: bool = False
    mask_mode: Literal["spatial", "channel"] = "spatial"
    eval_mode: Literal["unmasked", "expectation", "random"] = "unmasked"


@dataclass(frozen=True)
class ScoringConfig:
    """The anomaly map and the image score (not in the paper, A15: RD's evaluation code).

    Args:
        sigma: Gaussian smoothing of the anomaly map, in pixels (RD: 4).
        score_sigma: Smoothing of the map the image score is taken from; ``None`` = ``sigma`` (RD: one
            map for both). A wider ``sigma`` sharpens the pixel metrics while the image score keeps a
            narrower one (offline config: 8 and 4, model README "Map smoothing").
        score_mode: Image score from the map (``max``, ``mean``, ``topk``).
        anomaly_map_mode: Sum (``add``) or product (``multiply``) of the per-level maps.
        score_levels: The levels (0 = finest) whose maps the image score combines; ``None`` = all (RD).
            The map keeps every level (offline config: ``[1, 2]``, model README "Map smoothing").
    """

    sigma: float = 4.0
    score_sigma: float | None = None
    score_mode: ScoreModeName = "max"
    anomaly_map_mode: Literal["add", "multiply"] = "add"
    score_levels: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Loss and optimiser details (paper section 4.2, eqs. 13-14).

    Args:
        loss_mode: A11: per-pixel cosine (``"pixel"``, eq. 13) or RD's flattened cosine (``"flatten"``).
        decoder_loss_weight: A11: weight of an extra ``L_kd(F_E, F_D)`` term on the student's own features.
        betas: A13: Adam betas (RD's code).
        l2_lambda: A12: lambda_R of eq. 14, applied as Adam ``weight_decay = 2 * l2_lambda``.
        early_stopping_patience: A14: epochs without a better ``val_loss`` (eq. 13 in eval mode) before
            stopping; ``None`` = off. Needs a normal-only validation split (``val_split_mode: from_train``).
    """

    loss_mode: Literal["pixel", "flatten"] = "pixel"
    decoder_loss_weight: float = 0.0
    betas: tuple[float, float] = (0.5, 0.999)
    l2_lambda: float = 1e-5
    early_stopping_patience: int | None = None
