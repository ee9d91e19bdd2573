"""PyTorch model of FMGRD: reverse distillation with an SCSAtt bottleneck and feature mask generation.

Frozen teacher ``E`` -> ``F_E^1..3``; bottleneck ``F_B = OCE(SCSAtt(MSFF(F_E)))``; mirrored student
decoder -> ``F_D^1..3``; one feature mask generation module per level -> ``F_G^i = FMM_i(F_D^i)``.
Training returns ``(F_E, F_G, F_D)`` for the loss; eval returns an ``InferenceBatch`` whose map is
anomalib's Reverse Distillation map of ``(F_E, F_G)`` (per-level ``1 - cos``, eq. 12, upsampled, summed,
Gaussian-smoothed) and whose score is its maximum (or another :class:`ScoreMode`). The map is computed
here rather than by anomalib's RD ``AnomalyMapGenerator``, which builds a 2-D Gaussian kernel on every
call and convolves with all of it; :class:`~anomalib_ext.models.components.GaussianBlur` gives the same
map in two 1-D passes (its docstring has the timing).

Example:
    >>> model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False)
    >>> model.eval()(torch.rand(2, 3, 64, 64)).anomaly_map.shape
    torch.Size([2, 1, 64, 64])

See Also:
    :class:`anomalib.models.image.reverse_distillation.torch_model.ReverseDistillationModel`
    :mod:`anomalib_ext.models.fmgrd.components`, :mod:`anomalib_ext.models.fmgrd.config`
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components.backbone import get_decoder
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
from torch import nn

from anomalib_ext.backbones import FeatureExtractor, split_name
from anomalib_ext.models.components import GaussianBlur, ScoreMode, image_score

from .components import (
    BasicBlockDecoder,
    FeatureMaskGeneration,
    MultiScaleFeatureFusion,
    OneClassEmbedding,
    SCSAtt,
    init_like_ocbe,
)
from .config import BottleneckConfig, FMMConfig

# architectures whose mirrored student anomalib's ``get_decoder`` builds, and their OCE block type
RESNET_DECODER_BLOCKS = {
    "resnet18": "basic",
    "resnet34": "basic",
    "resnet50": "bottleneck",
    "resnet101": "bottleneck",
    "resnet152": "bottleneck",
    "wide_resnet50_2": "bottleneck",
    "wide_resnet101_2": "bottleneck",
}


class FmgrdModel(nn.Module):
    """FMGRD network.

    Args:
        backbone: timm teacher name; a tag (``wide_resnet50_2.tv_in1k``) selects the weights and is
            stripped for every architecture lookup.
        input_size: Input size ``(H, W)``; the anomaly map has this size.
        layers: Three teacher layers at strides s, 2s, 4s (``layer1..3`` for ResNets, ``blocks.1/2/4``
            for EfficientNet).
        pre_trained: Load the teacher's pretrained weights through :mod:`anomalib_ext.backbones`.
        mask_ratio: A9: the FMM mask rate lambda_M of eq. 11.
        bottleneck: MSFF/SCSAtt/OCE settings (:class:`BottleneckConfig`).
        fmm: Feature mask generation settings (:class:`FMMConfig`).
        anomaly_map_mode: A15: sum (``"add"``) or product of the level maps.
        sigma: A15: Gaussian smoothing of the map.
        score_mode: A15/A19: image score from the map.
        score_sigma: Smoothing of the map the image score is taken from; ``None`` = ``sigma``.
        score_levels: The levels (0 = finest) whose maps the image score combines; ``None`` = all (RD).
    """

    def __init__(
        self,
        backbone: str,
        input_size: Sequence[int],
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        mask_ratio: float = 0.65,
        bottleneck: BottleneckConfig | None = None,
        fmm: FMMConfig | None = None,
        anomaly_map_mode: AnomalyMapGenerationMode | str = AnomalyMapGenerationMode.ADD,
        sigma: float = 4,
        score_mode: ScoreMode | str = ScoreMode.MAX,
        score_sigma: float | None = None,
        score_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        bottleneck = bottleneck or BottleneckConfig()
        fmm = fmm or FMMConfig()
        if len(layers) != 3:
            msg = f"FMGRD distils exactly three teacher levels; got layers={list(layers)}."
            raise ValueError(msg)
        if not 0.0 <= mask_ratio < 1.0:
            msg = f"mask_ratio={mask_ratio} is invalid: expected a masked fraction in [0, 1)."
            raise ValueError(msg)
        arch, _ = split_name(backbone)

        self.encoder = FeatureExtractor(backbone, layers=list(layers), pre_trained=pre_trained).eval()
        channels = list(self.encoder.out_dims)
        stage_channels = bottleneck.oce_out_channels or self.encoder.feature_extractor.feature_info.info[-1]["num_chs"]

        self.msff = MultiScaleFeatureFusion(channels, bottleneck.fusion_channels, bottleneck.fusion_levels)
        self.scsatt = SCSAtt(self.msff.out_channels, bottleneck.attention)
        block = RESNET_DECODER_BLOCKS.get(arch, "basic")
        self.oce = OneClassEmbedding(
            self.msff.out_channels,
            stage_channels,
            block=block,
            num_blocks=bottleneck.oce_num_blocks or (3 if block == "bottleneck" else 2),
            width_per_group=bottleneck.oce_width_per_group or (128 if arch.startswith("wide_resnet") else 64),
        )
        if bottleneck.conv_init == "kaiming_fan_out":
            for module in (self.msff, self.scsatt, self.oce):
                init_like_ocbe(module)
        # anomalib's ResNet decoder where it exists (tag stripped, Trap 1), a mirrored one otherwise
        self.decoder = (
            get_decoder(arch)
            if arch in RESNET_DECODER_BLOCKS
            else BasicBlockDecoder(stage_channels, channels, bottleneck.decoder_blocks)
        )
        self.mask_ratio = mask_ratio
        self.fmm_config = fmm
        # one FMM per level, finest first (same order as the teacher levels)
        self.fmm = (
            nn.ModuleList(FeatureMaskGeneration(c, c, fmm.hidden_channels, fmm.align) for c in channels)
            if fmm.enabled
            else None
        )
        score_sigma = sigma if score_sigma is None else score_sigma
        if min(sigma, score_sigma) <= 0:
            msg = f"sigma={sigma}, score_sigma={score_sigma} are invalid: expected Gaussian widths in pixels, > 0."
            raise ValueError(msg)
        # anomalib's RD map at the narrower of the two widths; the wider map is that one blurred again by
        # sqrt(wide^2 - narrow^2) (Gaussian widths add in quadrature), so one map serves both when they differ
        narrow, wide = sorted((sigma, score_sigma))
        self.input_size = tuple(int(side) for side in input_size)
        self.anomaly_map_mode = AnomalyMapGenerationMode(anomaly_map_mode)
        self.blur = GaussianBlur(narrow)
        self.widen = GaussianBlur(math.sqrt(wide**2 - narrow**2)) if wide > narrow else None
        self.score_from_narrow = score_sigma < sigma
        self.score_mode = ScoreMode(score_mode)
        if score_levels is not None and (not score_levels or not set(score_levels) <= {0, 1, 2}):
            msg = (
                f"score_levels={list(score_levels)} is invalid: expected some of the levels 0, 1, 2 "
                "(finest first), or None for all."
            )
            raise ValueError(msg)
        self.score_levels = None if score_levels is None else sorted(set(score_levels))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's features ``F_E``, finest level first."""
        self.encoder.eval()
        return list(self.encoder(images).values())

    def distil(
        self, teacher: list[torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Bottleneck, student and FMMs from the teacher's features: ``(F_G, F_D)``, finest level first.

        Args:
            teacher: ``F_E``, finest level first.
            generator: Random source of the FMM masks (training, or ``eval_mode="random"``).
        """
        current = self.oce(self.scsatt(self.msff(teacher)))
        decoded: list[torch.Tensor] = []
        generated: list[torch.Tensor] = []
        for index, stage in enumerate((self.decoder.layer1, self.decoder.layer2, self.decoder.layer3)):
            level = 2 - index  # the decoder runs coarse -> fine
            feature = stage(current)
            decoded.insert(0, feature)
            if self.fmm is None:
                generated.insert(0, feature)
                current = feature
                continue
            regenerated = self.fmm[level](
                feature, self.mask_ratio, self.fmm_config.mask_mode, self.fmm_config.eval_mode, generator=generator
            )
            generated.insert(0, regenerated)
            current = regenerated if self.fmm_config.inline else feature  # A8: side branch unless inline
        return generated, decoded

    def _combine(self, level_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Anomalib's RD map of the given levels, before its blur: their sum (``add``) or product (``multiply``)."""
        stacked = torch.cat(list(level_maps), dim=1)
        if self.anomaly_map_mode == AnomalyMapGenerationMode.MULTIPLY:
            return stacked.prod(dim=1, keepdim=True)
        return stacked.sum(dim=1, keepdim=True)

    def predict(self, teacher: list[torch.Tensor], generated: list[torch.Tensor]) -> InferenceBatch:
        """Anomaly map ``(B, 1, H, W)`` (eq. 12 per level, A15) and the image score ``(B,)``."""
        # per level 1 - cos(F_E, F_G) at the input size, as anomalib's RD AnomalyMapGenerator computes it
        level_maps = [
            F.interpolate(
                (1 - F.cosine_similarity(level_teacher, level_generated)).unsqueeze(1),
                size=self.input_size,
                mode="bilinear",
                align_corners=True,
            )
            for level_teacher, level_generated in zip(teacher, generated, strict=True)
        ]
        narrow = self.blur(self._combine(level_maps))
        wide = narrow if self.widen is None else self.widen(narrow)
        score_map, anomaly_map = (narrow, wide) if self.score_from_narrow else (wide, narrow)
        if self.score_levels is not None:
            score_map = self.blur(self._combine([level_maps[i] for i in self.score_levels]))
            if not self.score_from_narrow and self.widen is not None:
                score_map = self.widen(score_map)
        return InferenceBatch(pred_score=image_score(score_map, self.score_mode), anomaly_map=anomaly_map)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Training: ``(F_E, F_G, F_D)``. Eval: ``InferenceBatch(pred_score (B,), anomaly_map (B,1,H,W))``."""
        teacher = self.encode(images)
        generated, decoded = self.distil(teacher, generator)
        if self.training:
            return teacher, generated, decoded
        return self.predict(teacher, generated)
