"""Building blocks of FMGRD: fusion, attention (SCSAtt), one-class embedding, decoder, feature masks.

Everything here is new relative to anomalib's Reverse Distillation: the multi-scale fusion with its
1x1 fuse conv (:class:`MultiScaleFeatureFusion`), the SCConv units (:class:`SpatialReconstructionUnit`,
:class:`ChannelReconstructionUnit`), :class:`SimAM`, their composition :class:`SCSAtt`, a one-class
embedding that takes the fused input and keeps the backbone's own width (:class:`OneClassEmbedding`),
a mirrored decoder for non-ResNet teachers (:class:`BasicBlockDecoder`) and the feature mask
generation module (:class:`FeatureMaskGeneration`). The ResNet student decoder is anomalib's
:func:`~anomalib.models.components.backbone.get_decoder`, used unchanged.

Paper: Qi, Chai, Ye, "Unsupervised Industrial Anomaly Detection Based on Feature Mask Generation and
Reverse Distillation", Chinese Journal of Information Fusion 1(2), 2024 (sections 3.3-3.7).

See Also:
    :mod:`anomalib_ext.models.fmgrd.torch_model`, which wires these modules together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .config import AttentionConfig


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Conv (no bias, padding ``k // 2``) -> BatchNorm -> ReLU, the unit of paper section 3.3."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_like_ocbe(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) conv weights, norm weight 1 / bias 0, as RD's ``OCBE`` (A16)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(sub, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(sub.weight, 1)
            nn.init.constant_(sub.bias, 0)


class MultiScaleFeatureFusion(nn.Module):
    """MSFF (paper section 3.3): bring ``F_E^1`` and ``F_E^2`` to the ``F_E^3`` grid, concat, 1x1 fuse.

    ``F_E^1`` goes through two conv3x3/stride-2 + BN + ReLU steps (C1 -> C2 -> C3), ``F_E^2`` through
    one (C2 -> C3); the selected levels are concatenated with ``F_E^3`` and fused by a 1x1 conv + BN +
    ReLU to ``fusion_channels``. With ``fusion_channels=0`` there is no fuse conv, which is exactly the
    fusion part of anomalib's ``OCBE``.

    Args:
        channels: Teacher channels ``(C1, C2, C3)``.
        fusion_channels: Output channels of the 1x1 fuse conv; ``None`` means C3 (A2), ``0`` no fuse conv.
        fusion_levels: Which teacher levels (0, 1, 2) enter the fusion (Table 7 ablation, A2).
    """

    def __init__(
        self,
        channels: Sequence[int],
        fusion_channels: int | None = None,
        fusion_levels: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        levels = tuple(int(level) for level in fusion_levels)
        if not levels or any(level not in {0, 1, 2} for level in levels) or len(set(levels)) != len(levels):
            msg = f"fusion_levels must be distinct values among 0, 1, 2; got {fusion_levels}."
            raise ValueError(msg)
        self.levels = levels
        # Only the branches of the selected levels are built: no unused parameters under DDP.
        self.down1 = nn.Sequential(conv_bn_relu(c1, c2, 3, 2), conv_bn_relu(c2, c3, 3, 2)) if 0 in levels else None
        self.down2 = conv_bn_relu(c2, c3, 3, 2) if 1 in levels else None
        concat_channels = len(levels) * c3
        fusion_channels = c3 if fusion_channels is None else fusion_channels
        self.fuse = conv_bn_relu(concat_channels, fusion_channels, 1, 1) if fusion_channels else nn.Identity()
        self.out_channels = fusion_channels or concat_channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``[F_E^1, F_E^2, F_E^3]`` into one map on the ``F_E^3`` grid."""
        parts = []
        for level in self.levels:
            if level == 0:
                parts.append(self.down1(features[0]))
            elif level == 1:
                parts.append(self.down2(features[1]))
            else:
                parts.append(features[2])
        return self.fuse(torch.cat(parts, dim=1))


class SpatialReconstructionUnit(nn.Module):
    """SRU of SCConv (paper eqs. 2-5): separate informative from redundant positions, cross-add halves.

    Args:
        channels: Input channels (even, divisible by ``group_num``).
        group_num: GroupNorm groups (A4, reference SCConv: 4).
        gate_threshold: Gate threshold on the sigmoid weights (paper: 0.5).
        gate_mode: ``"soft"`` (reference code, differentiable, A4) or ``"hard"`` (literal paper reading;
            gives the GroupNorm parameters no gradient, so DDP then needs ``find_unused_parameters``).
    """

    def __init__(
        self,
        channels: int,
        group_num: int = 4,
        gate_threshold: float = 0.5,
        gate_mode: Literal["soft", "hard"] = "soft",
    ) -> None:
        super().__init__()
        if channels % 2 or channels % group_num:
            msg = f"SRU channels must be even and divisible by sru_group_num={group_num}; got {channels}."
            raise ValueError(msg)
        self.norm = nn.GroupNorm(group_num, channels)
        self.gate_threshold = gate_threshold
        self.gate_mode = gate_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the spatially reconstructed features, same shape as ``x``."""
        normed = self.norm(x)  # eq. 2
        gamma_weights = (self.norm.weight / self.norm.weight.sum()).view(1, -1, 1, 1)  # eq. 3
        reweights = torch.sigmoid(normed * gamma_weights)  # eq. 4 before the gate
        if self.gate_mode == "soft":
            above = reweights > self.gate_threshold
            info_gate = torch.where(above, torch.ones_like(reweights), reweights)
            redundant_gate = torch.where(above, torch.zeros_like(reweights), reweights)
        else:
            info_gate = (reweights > self.gate_threshold).to(x.dtype)
            redundant_gate = 1.0 - info_gate
        x_info, x_redundant = info_gate * x, redundant_gate * x  # eq. 5 rows 1-2
        info_a, info_b = torch.chunk(x_info, 2, dim=1)
        red_a, red_b = torch.chunk(x_redundant, 2, dim=1)
        return torch.cat([info_a + red_b, info_b + red_a], dim=1)  # eq. 5 rows 3-4


class ChannelReconstructionUnit(nn.Module):
    """CRU of SCConv (paper eqs. 6-8): split, squeeze, group-wise + point-wise transform, fuse.

    Args:
        channels: Input and output channels.
        alpha: Fraction of channels in the upper (rich) branch (paper: halves).
        squeeze_ratio: Channel squeeze ratio of both branches (A5: 2).
        groups: Number of groups of the group-wise conv (A5: 2).
        kernel_size: Kernel of the group-wise conv (A5: 3).
        softmax: ``"branch"`` = per-channel softmax over the two branches (paper eq. 7, A5) or
            ``"reference"`` = softmax over all 2C pooled channels (reference SCConv code).
    """

    def __init__(
        self,
        channels: int,
        alpha: float = 0.5,
        squeeze_ratio: int = 2,
        groups: int = 2,
        kernel_size: int = 3,
        softmax: Literal["branch", "reference"] = "branch",
    ) -> None:
        super().__init__()
        upper = int(alpha * channels)
        lower = channels - upper
        if upper < squeeze_ratio or lower < squeeze_ratio or (upper // squeeze_ratio) % groups or channels % groups:
            msg = (
                f"CRU: int(cru_alpha*C)//cru_squeeze_ratio must be divisible by cru_groups and C by cru_groups; "
                f"got C={channels}, alpha={alpha}, squeeze_ratio={squeeze_ratio}, groups={groups}."
            )
            raise ValueError(msg)
        self.split_sizes = (upper, lower)
        self.softmax = softmax
        self.squeeze_upper = nn.Conv2d(upper, upper // squeeze_ratio, 1, bias=False)
        self.squeeze_lower = nn.Conv2d(lower, lower // squeeze_ratio, 1, bias=False)
        self.group_conv = nn.Conv2d(
            upper // squeeze_ratio, channels, kernel_size, 1, kernel_size // 2, groups=groups, bias=True
        )
        self.point_conv_upper = nn.Conv2d(upper // squeeze_ratio, channels, 1, bias=False)
        self.point_conv_lower = nn.Conv2d(lower // squeeze_ratio, channels - lower // squeeze_ratio, 1, bias=False)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(Y1, Y2)``, the transformed upper and lower branches (eq. 6 inputs)."""
        upper, lower = torch.split(x, self.split_sizes, dim=1)
        upper, lower = self.squeeze_upper(upper), self.squeeze_lower(lower)
        y_upper = self.group_conv(upper) + self.point_conv_upper(upper)
        y_lower = torch.cat([self.point_conv_lower(lower), lower], dim=1)
        return y_upper, y_lower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the channel-reconstructed features, same shape as ``x``."""
        y_upper, y_lower = self.branches(x)
        if self.softmax == "branch":  # eqs. 6-8: beta1 + beta2 = 1 per (b, c)
            pooled = torch.stack([y_upper.mean(dim=(2, 3)), y_lower.mean(dim=(2, 3))], dim=0)
            beta = torch.softmax(pooled, dim=0)[..., None, None]
            return beta[0] * y_upper + beta[1] * y_lower
        out = torch.cat([y_upper, y_lower], dim=1)
        out = out * torch.softmax(out.mean(dim=(2, 3), keepdim=True), dim=1)
        first, second = torch.chunk(out, 2, dim=1)
        return first + second


class SimAM(nn.Module):
    """Parameter-free attention SimAM (paper eqs. 9-10), statistics over all H*W positions (A6).

    Args:
        e_lambda: Regulariser lambda of the energy function (A6: 1e-4).
    """

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``sigmoid(1 / e*) * x``; a 1x1 map gives ``sigmoid(0.5) * x`` instead of NaN."""
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        squared = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        variance = squared.sum(dim=(2, 3), keepdim=True) / n
        inverse_energy = squared / (4 * (variance + self.e_lambda)) + 0.5  # 1 / e_t* of eq. 9
        return x * torch.sigmoid(inverse_energy)  # eq. 10


class SCSAtt(nn.Module):
    """SCSAtt (paper section 3.4): SCConv (SRU then CRU) -> 1x1 conv + BN + ReLU -> SimAM (A3).

    Args:
        channels: Input and output channels.
        config: The ablation switches and unit settings (:class:`~anomalib_ext.models.fmgrd.config.AttentionConfig`).
    """

    def __init__(self, channels: int, config: AttentionConfig) -> None:
        super().__init__()
        self.scconv = (
            nn.Sequential(
                SpatialReconstructionUnit(
                    channels, config.sru_group_num, config.sru_gate_threshold, config.sru_gate_mode
                ),
                ChannelReconstructionUnit(
                    channels,
                    config.cru_alpha,
                    config.cru_squeeze_ratio,
                    config.cru_groups,
                    config.cru_kernel_size,
                    config.cru_softmax,
                ),
            )
            if config.use_scconv
            else nn.Identity()
        )
        self.pointwise = conv_bn_relu(channels, channels, 1, 1) if config.pointwise else nn.Identity()
        self.simam = SimAM(config.simam_lambda) if config.use_simam else nn.Identity()
        self.residual = config.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the attended features, same shape as ``x``."""
        out = self.simam(self.pointwise(self.scconv(x)))
        return x + out if self.residual else out


class OneClassEmbedding(nn.Module):
    """RD's one-class embedding (OCE, A7): a stride-2 "layer4-like" stack of ResNet blocks.

    Unlike anomalib's ``OCBE`` it takes any input width (the fused map), keeps the backbone's own
    width (128 for WideResNets, anomalib uses 64) and has no unused ``conv4``/``bn4``.

    Args:
        in_channels: Channels of the fused input.
        out_channels: Channels of ``F_B`` (the teacher's /32 stage width: 2048 for WRN50-2).
        block: ``"bottleneck"`` (torchvision ``Bottleneck``) or ``"basic"`` (``BasicBlock``).
        num_blocks: Number of blocks (A7: 3 bottlenecks, 2 basic blocks).
        width_per_group: Bottleneck base width (A7: 128 for wide_resnet*, 64 otherwise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: str = "bottleneck",
        num_blocks: int = 3,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        block_type = {"bottleneck": Bottleneck, "basic": BasicBlock}[block]
        expansion = block_type.expansion
        if out_channels % expansion:
            msg = f"OCE out_channels={out_channels} must be divisible by the block expansion {expansion}."
            raise ValueError(msg)
        planes = out_channels // expansion
        width = {"base_width": width_per_group} if block_type is Bottleneck else {}
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride=2), nn.BatchNorm2d(out_channels))
        layers = [block_type(in_channels, planes, 2, downsample, **width)]
        layers += [block_type(out_channels, planes, **width) for _ in range(num_blocks - 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the compact code ``F_B`` at half the input resolution."""
        return self.layers(x).contiguous()


class BasicBlockDecoder(nn.Module):
    """Mirrored student decoder for teachers anomalib has no decoder for (e.g. EfficientNet-Lite).

    Three stages of ``DecoderBasicBlock``; the first block of each stage doubles the resolution with
    a ``ConvTranspose2d(k=2, s=2) + BN`` upsample branch. Channels go ``in -> C3 -> C2 -> C1``.
    Same interface as anomalib's ``ResNetDecoder``: ``layer1..layer3`` and ``forward`` returning
    ``[F_D^1, F_D^2, F_D^3]`` (finest first).

    Args:
        in_channels: Channels of ``F_B``.
        channels: Teacher channels ``(C1, C2, C3)``.
        blocks: Blocks per stage (offline variant: ``(2, 2, 2)``).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], blocks: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        stages = []
        current = in_channels
        for out, count in zip(reversed(tuple(channels)), blocks, strict=True):
            upsample = nn.Sequential(nn.ConvTranspose2d(current, out, 2, 2, bias=False), nn.BatchNorm2d(out))
            stage = [DecoderBasicBlock(current, out, stride=2, upsample=upsample)]
            stage += [DecoderBasicBlock(out, out) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            current = out
        self.layer1, self.layer2, self.layer3 = stages
        for module in self.modules():  # same init as anomalib's ResNetDecoder (Conv2d only, Trap 21)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[F_D^1, F_D^2, F_D^3]``."""
        feature_3 = self.layer1(x)
        feature_2 = self.layer2(feature_3)
        feature_1 = self.layer3(feature_2)
        return [feature_1, feature_2, feature_3]


class FeatureMaskGeneration(nn.Module):
    """FMM (paper section 3.7, eq. 11 and the equation after it): mask, then regenerate.

    ``F_G = W_l2(ReLU(W_l1(f_align(F_D) * M)))`` with ``M`` zero at random positions with probability
    ``mask_ratio`` during training; in eval the mask is off (A10, ``eval_mode="unmasked"``).

    Args:
        student_channels: Channels of ``F_D``.
        teacher_channels: Channels of ``F_E`` (and of ``F_G``).
        hidden_channels: Channels between the two 3x3 convs; ``None`` = teacher channels (A8).
        align: Use the 1x1 ``f_align`` conv (A8).
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        hidden_channels: int | None = None,
        align: bool = True,
    ) -> None:
        super().__init__()
        hidden = hidden_channels or teacher_channels
        if not align and student_channels != teacher_channels:
            msg = "fmm_align=False needs equal student and teacher channels."
            raise ValueError(msg)
        self.align = nn.Conv2d(student_channels, teacher_channels, 1) if align else nn.Identity()
        self.generator = nn.Sequential(
            nn.Conv2d(teacher_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, teacher_channels, 3, padding=1),
        )

    @staticmethod
    def draw_mask(
        features: torch.Tensor,
        mask_ratio: float,
        mask_mode: Literal["spatial", "channel"] = "spatial",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. 11: a {0, 1} mask, 0 where ``U(0, 1) < mask_ratio``; (B,1,H,W) spatial or (B,C,1,1) channel."""
        batch, channels, height, width = features.shape
        shape = (batch, 1, height, width) if mask_mode == "spatial" else (batch, channels, 1, 1)
        uniform = torch.rand(shape, device=features.device, generator=generator)
        return (uniform >= mask_ratio).to(features.dtype)

    def forward(
        self,
        student_features: torch.Tensor,
        mask_ratio: float = 0.65,
        mask_mode: Literal["spatial", "channel"] = "spatial",
        eval_mode: Literal["unmasked", "expectation", "random"] = "unmasked",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``F_G`` from ``F_D``; masking only in training (or ``eval_mode="random"``)."""
        aligned = self.align(student_features)
        if mask_ratio > 0 and (self.training or eval_mode == "random"):
            aligned = aligned * self.draw_mask(aligned, mask_ratio, mask_mode, generator)
        elif not self.training and eval_mode == "expectation":
            aligned = aligned * (1.0 - mask_ratio)
        return self.generator(aligned)
