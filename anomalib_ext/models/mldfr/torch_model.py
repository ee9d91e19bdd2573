"""PyTorch model of MLDFR: fused frozen features -> trained restorer -> restoration-error map.

In training mode, :class:`MLDFRModel` takes the intact images and their damaged copies and returns
``(restored, target)``: the restorer's output on the damaged image's input-side features and the
intact image's target-side features, for :class:`~anomalib_ext.models.mldfr.loss.MLDFRLoss`. In
eval mode it takes only test images and returns ``InferenceBatch(pred_score, anomaly_map)``: this
path (normalisation, features, restorer, map, smoothing, score) is what gets exported; it has no
randomness and no data-dependent control flow.

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.config import FeatureConfig, RestorerConfig
    >>> from anomalib_ext.models.mldfr.torch_model import MLDFRModel
    >>> model = MLDFRModel(cnn_backbone="efficientnet_lite0", cnn_layers=[1, 2, 3], vit_backbone=None,
    ...                    input_size=(64, 64), pre_trained=False, sigma=2.0,
    ...                    features=FeatureConfig(deep_branch=True), restorer=RestorerConfig(num_blocks=2)).eval()
    >>> output = model(torch.rand(2, 3, 64, 64))
    >>> output.anomaly_map.shape, output.pred_score.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2]))

See Also:
    - :mod:`anomalib_ext.models.mldfr.lightning_model`: the Lightning module.
    - :mod:`anomalib_ext.models.mldfr.config`: the ablation groups.
    - :mod:`anomalib_ext.models.mldfr.feature_extractor`, :mod:`~anomalib_ext.models.mldfr.restorer`,
      :mod:`~anomalib_ext.models.mldfr.anomaly_map`: the components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from anomalib_ext.models.components import AnomalyScorer

from .anomaly_map import AnomalyMapGenerator
from .config import AnomalyMapConfig, FeatureConfig, RestorerConfig
from .feature_extractor import MultilevelFeatureExtractor
from .restorer import FeatureRestorer


class MLDFRModel(nn.Module):
    """MLDFR network: :class:`MultilevelFeatureExtractor` + :class:`FeatureRestorer` + map + score.

    Images enter in [0, 1] pixel space (the damage is defined there) and are normalised here with
    the backbones' ImageNet statistics, so the exported model also takes [0, 1] images.

    Args:
        cnn_backbone: A1: CNN of the low-level features, or ``None``.
        cnn_layers: CNN taps, shallow to deep.
        vit_backbone: CaiT of the deep pair, or ``None``.
        input_size: ``(H, W)`` of the model input; fixes the token count of the restorer.
        pre_trained: Real ImageNet weights for the frozen backbones.
        sigma: A28: Gaussian smoothing of the map, in pixels (0 = none).
        features: Fusion and input settings (:class:`~anomalib_ext.models.mldfr.config.FeatureConfig`;
            the pre-processor fields are used by the Lightning module).
        restorer: The restorer (:class:`~anomalib_ext.models.mldfr.config.RestorerConfig`).
        anomaly_map: Map and score (:class:`~anomalib_ext.models.mldfr.config.AnomalyMapConfig`).
    """

    def __init__(
        self,
        cnn_backbone: str | None = "resnet18.tv_in1k",
        cnn_layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        vit_backbone: str | None = "cait_xs24_384.fb_dist_in1k",
        input_size: tuple[int, int] = (384, 384),
        pre_trained: bool = True,
        sigma: float = 8.0,
        features: FeatureConfig | None = None,
        restorer: RestorerConfig | None = None,
        anomaly_map: AnomalyMapConfig | None = None,
    ) -> None:
        super().__init__()
        features = features or FeatureConfig()
        restorer = restorer or RestorerConfig()
        anomaly_map = anomaly_map or AnomalyMapConfig()
        self.input_size = tuple(int(side) for side in input_size)
        self.feature_extractor = MultilevelFeatureExtractor(
            cnn_backbone=cnn_backbone,
            cnn_layers=cnn_layers,
            vit_backbone=vit_backbone,
            input_size=self.input_size,
            pre_trained=pre_trained,
            config=features,
        )
        grid_height, grid_width = self.feature_extractor.grid_size
        input_width, target_width = self.feature_extractor.num_channels, self.feature_extractor.target_channels
        if anomaly_map.score_against == "input" and input_width != target_width:
            msg = (
                f"anomaly_map.score_against='input' compares the restored features ({target_width} channels, the "
                f"target side's) with the input side ({input_width} channels): use a deep pair of equal widths "
                f"(features.deep_target_tap in the input's stage, e.g. 'blocks.5.3') or score_against='target'."
            )
            raise ValueError(msg)
        self.restorer = FeatureRestorer(
            dim=input_width, num_tokens=grid_height * grid_width, out_dim=target_width, **asdict(restorer)
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            input_size=self.input_size,
            channel_reduction=anomaly_map.channel_reduction,
            align_corners=anomaly_map.align_corners,
        )
        self.scorer = AnomalyScorer(
            sigma=sigma, score_mode=anomaly_map.score_mode, topk_fraction=anomaly_map.topk_fraction
        )
        self.feature_norm = features.feature_norm
        self.normalize = features.normalize
        self.score_against = anomaly_map.score_against
        # Constants, not training state: kept out of the state dict, but moved and exported with the model.
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std if self.normalize else images

    def _normalise_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.feature_norm == "none":
            return features
        return F.layer_norm(features.transpose(1, -1), (features.shape[1],)).transpose(1, -1)

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Target-side features ``(B, C, h, w)`` of intact ``images`` in [0, 1] (frozen: cacheable per image)."""
        return self._normalise_features(self.feature_extractor.target_features(self._prepare(images)))

    def forward(
        self,
        images: torch.Tensor,
        damaged: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Training: ``(restored, target)`` features; eval: ``InferenceBatch(pred_score, anomaly_map)``.

        Args:
            images: Intact (training) or test images ``(B, 3, H, W)`` in [0, 1].
            damaged: Damaged copies of ``images`` in [0, 1] (training only).
            targets: Training only: the target-side features of ``images`` when already known
                (:meth:`target_features`, e.g. from a cache); ``None`` computes them.

        Returns:
            In training mode, the restored input-side features of ``damaged`` and the target-side
            features of ``images``, both ``(B, C, h, w)``. In eval mode, the smoothed anomaly map
            ``(B, 1, H, W)`` and the image score ``(B,)``.
        """
        if self.training:
            if damaged is None:
                msg = "MLDFRModel needs the damaged images in training mode."
                raise ValueError(msg)
            inputs = self._normalise_features(self.feature_extractor.input_features(self._prepare(damaged)))
            if targets is None:
                targets = self.target_features(images)
            return self.restorer(inputs), targets

        inputs, targets = self.feature_extractor(self._prepare(images))
        inputs, targets = self._normalise_features(inputs), self._normalise_features(targets)
        restored = self.restorer(inputs)
        reference = targets if self.score_against == "target" else inputs
        return self.scorer(self.anomaly_map_generator(restored, reference))
