"""PyTorch model of FMGRD: reverse distillation with an SCSAtt bottleneck and feature mask generation.

Frozen teacher ``E`` -> ``F_E^1..3``; bottleneck ``F_B = OCE(SCSAtt(MSFF(F_E)))``; mirrored student
decoder -> ``F_D^1..3``; one feature mask generation module per level -> ``F_G^i = FMM_i(F_D^i)``.
Training returns ``(F_E, F_G, F_D)`` for the loss; eval returns an ``InferenceBatch`` whose map is the
sum of the upsampled ``1 - cos(F_E^i, F_G^i)`` maps, Gaussian-smoothed, and whose score is its max.

Example:
    >>> model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False)
    >>> model.eval()(torch.rand(2, 3, 64, 64)).anomaly_map.shape
    torch.Size([2, 1, 64, 64])

See Also:
    :class:`anomalib.models.image.reverse_distillation.torch_model.ReverseDistillationModel`
    :mod:`anomalib_ext.models.fmgrd.components`
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.backbone import get_decoder
from torch import nn

from anomalib_ext.backbones import FeatureExtractor, split_name

from .anomaly_map import AnomalyMapGenerator
from .components import (
    BasicBlockDecoder,
    FeatureMaskGeneration,
    MultiScaleFeatureFusion,
    OneClassEmbedding,
    SCSAtt,
    init_like_ocbe,
)

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
    """FMGRD network. Arguments mirror :class:`anomalib_ext.models.FMGRD` (see its docstring).

    Args:
        backbone: timm teacher name; a tag (``wide_resnet50_2.tv_in1k``) selects the weights and is
            stripped for every architecture lookup.
        input_size: Input size ``(H, W)``; the anomaly map has this size.
        layers: Three teacher layers (``layer1..3`` for ResNets, ``blocks.1/2/4`` for EfficientNet).
        pre_trained: Load the teacher's pretrained weights through :mod:`anomalib_ext.backbones`.
        backbone_weights_path: Optional local weights file for the teacher.
        decoder_blocks: Blocks per stage of the non-ResNet student decoder.
        oce_out_channels: Channels of ``F_B``; ``None`` = the teacher's /32 stage width.
        Other arguments: see :class:`anomalib_ext.models.FMGRD`.
    """

    def __init__(
        self,
        backbone: str,
        input_size: Sequence[int],
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights_path: str | None = None,
        fusion_channels: int | None = None,
        fusion_levels: Sequence[int] = (0, 1, 2),
        use_scconv: bool = True,
        use_simam: bool = True,
        scsatt_pointwise: bool = True,
        scsatt_residual: bool = False,
        sru_group_num: int = 4,
        sru_gate_threshold: float = 0.5,
        sru_gate_mode: str = "soft",
        cru_alpha: float = 0.5,
        cru_squeeze_ratio: int = 2,
        cru_groups: int = 2,
        cru_kernel_size: int = 3,
        cru_softmax: str = "branch",
        simam_lambda: float = 1e-4,
        oce_num_blocks: int | None = None,
        oce_width_per_group: int | None = None,
        oce_out_channels: int | None = None,
        decoder_blocks: Sequence[int] = (2, 2, 2),
        use_fmm: bool = True,
        fmm_align: bool = True,
        fmm_hidden_channels: int | None = None,
        fmm_inline: bool = False,
        mask_ratio: float = 0.65,
        mask_mode: str = "spatial",
        fmm_eval: str = "unmasked",
        anomaly_map_mode: str = "add",
        sigma: float = 4,
        score_mode: str = "max",
        upsample_align_corners: bool = True,
        conv_init: str = "kaiming_fan_out",
    ) -> None:
        super().__init__()
        if len(layers) != 3:
            msg = f"FMGRD distils exactly three teacher levels; got layers={list(layers)}."
            raise ValueError(msg)
        if not 0.0 <= mask_ratio < 1.0:
            msg = f"mask_ratio must be in [0, 1); got {mask_ratio}."
            raise ValueError(msg)
        checks = {
            "mask_mode": (mask_mode, {"spatial", "channel"}),
            "fmm_eval": (fmm_eval, {"unmasked", "expectation", "random"}),
            "score_mode": (score_mode, {"max", "mean"}),
            "conv_init": (conv_init, {"kaiming_fan_out", "default"}),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                msg = f"{key} must be one of {sorted(allowed)}; got {value!r}."
                raise ValueError(msg)
        arch, _ = split_name(backbone)

        self.encoder = FeatureExtractor(
            backbone, layers=list(layers), pre_trained=pre_trained, weights=backbone_weights_path
        )
        self.encoder.requires_grad_(False)  # Trap 6: frozen for optimisers and DDP alike
        self.encoder.eval()
        channels = list(self.encoder.out_dims)
        if len(channels) != 3:
            msg = f"Teacher {backbone!r} resolved layers {list(layers)} to {self.encoder.layers}; need 3 levels."
            raise ValueError(msg)
        stage_channels = oce_out_channels or self.encoder.feature_extractor.feature_info.info[-1]["num_chs"]

        self.msff = MultiScaleFeatureFusion(channels, fusion_channels, fusion_levels)
        self.scsatt = SCSAtt(
            self.msff.out_channels,
            use_scconv=use_scconv,
            use_simam=use_simam,
            pointwise=scsatt_pointwise,
            residual=scsatt_residual,
            sru_group_num=sru_group_num,
            sru_gate_threshold=sru_gate_threshold,
            sru_gate_mode=sru_gate_mode,
            cru_alpha=cru_alpha,
            cru_squeeze_ratio=cru_squeeze_ratio,
            cru_groups=cru_groups,
            cru_kernel_size=cru_kernel_size,
            cru_softmax=cru_softmax,
            simam_lambda=simam_lambda,
        )
        block = RESNET_DECODER_BLOCKS.get(arch, "basic")
        self.oce = OneClassEmbedding(
            self.msff.out_channels,
            stage_channels,
            block=block,
            num_blocks=oce_num_blocks or (3 if block == "bottleneck" else 2),
            width_per_group=oce_width_per_group or (128 if arch.startswith("wide_resnet") else 64),
        )
        if conv_init == "kaiming_fan_out":
            for module in (self.msff, self.scsatt, self.oce):
                init_like_ocbe(module)
        # anomalib's ResNet decoder where it exists (tag stripped, Trap 1), a mirrored one otherwise
        self.decoder = (
            get_decoder(arch)
            if arch in RESNET_DECODER_BLOCKS
            else BasicBlockDecoder(stage_channels, channels, decoder_blocks)
        )
        self.decoder_stages = 3  # layer1..layer3; anomalib's ResNetDecoder has no layer4
        self.use_fmm = use_fmm
        self.fmm_inline = fmm_inline
        self.mask_ratio = mask_ratio
        self.mask_mode = mask_mode
        self.fmm_eval = fmm_eval
        self.score_mode = score_mode
        # one FMM per level, finest first (same order as the teacher levels)
        self.fmm = (
            nn.ModuleList(
                FeatureMaskGeneration(channel, channel, fmm_hidden_channels, fmm_align) for channel in channels
            )
            if use_fmm
            else None
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            input_size, sigma=sigma, mode=anomaly_map_mode, align_corners=upsample_align_corners
        )
        # Random source of the FMM masks; the Lightning module seeds it per rank (not saved, not exported).
        self.mask_generator: torch.Generator | None = None

    def train(self, mode: bool = True) -> FmgrdModel:
        """Switch mode but keep the frozen teacher (and its BatchNorm statistics) in eval."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _generate(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self.fmm[level](features, self.mask_ratio, self.mask_mode, self.fmm_eval, generator=self.mask_generator)

    def decode(self, bottleneck: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the student and the FMMs; return ``(F_G, F_D)``, each finest level first."""
        stages = (self.decoder.layer1, self.decoder.layer2, self.decoder.layer3)  # coarse -> fine
        decoded: list[torch.Tensor] = []
        generated: list[torch.Tensor] = []
        current = bottleneck
        for index, stage in enumerate(stages):
            level = 2 - index
            feature = stage(current)
            decoded.insert(0, feature)
            if self.fmm is None:
                generated.insert(0, feature)
                current = feature
                continue
            regenerated = self._generate(level, feature)
            generated.insert(0, regenerated)
            current = regenerated if self.fmm_inline else feature  # A8: side branch unless inline
        return generated, decoded

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's features ``F_E``, finest level first."""
        self.encoder.eval()
        return list(self.encoder(images).values())

    def distil(self, teacher: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Bottleneck and student from the teacher's features: ``(F_G, F_D)``, finest level first."""
        return self.decode(self.oce(self.scsatt(self.msff(teacher))))

    def extract(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(F_E, F_G, F_D)``, finest level first; FMM masks follow the module's mode."""
        teacher = self.encode(images)
        generated, decoded = self.distil(teacher)
        return teacher, generated, decoded

    def predict(
        self,
        teacher: list[torch.Tensor],
        generated: list[torch.Tensor],
        image_size: Sequence[int] | None = None,
    ) -> InferenceBatch:
        """Anomaly map ``(B, 1, H, W)`` from eq. 12 per level (A15) and its max (or mean) as ``(B, 1)`` score.

        ``image_size`` defaults to ``input_size``; ``forward`` passes the images' own size, so a model
        reloaded with another pre-processor size still returns maps as large as its input.
        """
        anomaly_map = self.anomaly_map_generator(teacher, generated, image_size)
        if self.score_mode == "max":
            pred_score = torch.amax(anomaly_map, dim=(-2, -1))
        else:
            pred_score = torch.mean(anomaly_map, dim=(-2, -1))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def forward(
        self, images: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Training: ``(F_E, F_G, F_D)``. Eval: ``InferenceBatch(pred_score (B,1), anomaly_map (B,1,H,W))``."""
        teacher, generated, decoded = self.extract(images)
        if self.training:
            return teacher, generated, decoded
        return self.predict(teacher, generated, images.shape[-2:])
