"""PyTorch model of RB-AE: Reference-Based Autoencoder for Surface Defect Detection.

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu, X. Wang).

An autoencoder trained from scratch reconstructs the input; at the three deepest encoder levels a
reference-based attention module (RBAM) rebuilds the input's features from patches of one fixed
defect-free reference image, so defect features do not reach the decoder. The input and its
reconstruction are re-encoded and a multi-scale feature discrimination module (MSFDM, three FDM
heads) segments the defects; the anomaly map is ``0.2 AM_1 + 0.2 g(AM_2) + 0.6 g(AM_3)`` (Eq. 11),
smoothed and scored by the package's :class:`~anomalib_ext.models.components.AnomalyScorer`.

The reference image and its level-3/4/5 features are persistent buffers, so checkpoints and the
exported graph carry them. Before they are set (phase 1) they are zero and the map is still finite.

Example:
    >>> import torch
    >>> from anomalib_ext.models.rbae.torch_model import RbaeModel
    >>> from anomalib_ext.models.rbae.config import NetworkConfig
    >>> model = RbaeModel(input_size=(64, 64), network=NetworkConfig(encoder_channels=(8, 8, 16, 16, 16))).eval()
    >>> out = model(torch.rand(2, 3, 64, 64))
    >>> out.pred_score.shape, out.anomaly_map.shape
    (torch.Size([2]), torch.Size([2, 1, 64, 64]))

See Also:
    - :class:`anomalib_ext.models.rbae.lightning_model.RBAE`: the two-phase Lightning module.
    - :mod:`anomalib_ext.models.rbae.components`: encoder, RBAM, decoder, FDM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from torch import Tensor, nn

from anomalib_ext.models.components import AnomalyScorer, image_score
from anomalib_ext.models.rbae.components import FDM, RBAM, Decoder, Encoder
from anomalib_ext.models.rbae.config import NetworkConfig

ENCODER_STRIDES = (1, 2, 2, 2, 2)  # A3: level 1 at full resolution, so AM_1 needs no upsampling (Eq. 11)
RBAM_LEVELS = (3, 4, 5)  # paper: l1 = 3 ... l2 = 5 (Eq. 9)
MSFDM_LEVELS = (1, 2, 3)  # paper: first three encoder layers (Sec. III-D)


class RbaeModel(DynamicBufferMixin, nn.Module):
    """RB-AE network: encoder, three RBAMs, decoder, three FDMs, and the reference buffers.

    Args:
        input_size: ``(H, W)`` of the images; sizes the reference buffers. Both must be divisible
            by ``32 * max(network.rbfrm_patch_sizes)`` (64 by default).
        network: Architecture and map settings (:class:`~anomalib_ext.models.rbae.config.NetworkConfig`).
        freeze_encoder_bn: A26: keep the encoder in eval mode once the reference is set (phase 2).
    """

    def __init__(
        self,
        input_size: Sequence[int] = (256, 256),
        network: NetworkConfig = NetworkConfig(),
        freeze_encoder_bn: bool = True,
    ) -> None:
        super().__init__()
        height, width = (int(s) for s in input_size)
        strides = ENCODER_STRIDES
        channels = tuple(int(c) for c in network.encoder_channels)
        patch_sizes = tuple(int(k) for k in network.rbfrm_patch_sizes)
        if len(network.am_weights) != len(MSFDM_LEVELS):
            msg = f"am_weights needs {len(MSFDM_LEVELS)} values (lambda_1..3 of Eq. 11), got {network.am_weights}."
            raise ValueError(msg)
        divisor = math.prod(strides) * max(patch_sizes)
        if height % divisor or width % divisor:
            msg = (
                f"input_size={tuple(input_size)} must be divisible by {divisor} (product of the encoder strides "
                f"{strides} times the largest RBFRM patch size {max(patch_sizes)})."
            )
            raise ValueError(msg)
        self.input_size = (height, width)
        self.am_weights = tuple(float(w) for w in network.am_weights)
        self.am_align_corners = network.am_align_corners
        self.score_pool_size = int(network.score_pool_size)
        self.freeze_encoder_bn = freeze_encoder_bn

        self.encoder = Encoder(channels, strides)
        self.rbam = nn.ModuleList(
            RBAM(
                channels[level - 1],
                patch_sizes,
                network.rbfrm_softmax_scale,
                network.ffm_mid_channels,
                network.ffm_kernel_size,
                network.ffm_squeeze_norm,
                network.rbfrm_eps,
                network.rbfrm_learn_scale,
            )
            for level in RBAM_LEVELS
        )
        self.decoder = Decoder(channels, network.decoder_out_activation)
        self.fdm = nn.ModuleList(FDM(channels[level - 1], network.fdm_hidden_ratios) for level in MSFDM_LEVELS)
        self.scorer = AnomalyScorer(sigma=network.sigma, score_mode=network.score_mode)

        self.register_buffer("ref_image", torch.zeros(1, 3, height, width))
        scale = 1
        for level, stride in enumerate(strides, start=1):
            scale *= stride
            if level in RBAM_LEVELS:
                shape = (1, channels[level - 1], height // scale, width // scale)
                self.register_buffer(f"ref_feat_{level}", torch.zeros(shape))
        self.register_buffer("ref_ready", torch.tensor(False))

    @property
    def reference_features(self) -> list[Tensor]:
        """The stored ``F_ref^l`` for l = 3, 4, 5."""
        return [self.get_tensor_attribute(f"ref_feat_{level}") for level in RBAM_LEVELS]

    def train(self, mode: bool = True) -> RbaeModel:
        """Set train mode but keep the encoder in eval once it is frozen (phase 2, A26, trap T8)."""
        super().train(mode)
        if mode and self.freeze_encoder_bn and bool(self.ref_ready):
            self.encoder.eval()
        return self

    def freeze_encoder(self, requires_grad: bool = False) -> None:
        """Phase 2: the encoder stops learning (A26): eval mode (frozen BN statistics) and no gradients.

        Args:
            requires_grad: keep ``requires_grad`` on the encoder parameters. Only for DDP, whose
                reducer was built with them; the caller must then drop their gradients before
                each optimiser step.
        """
        self.encoder.requires_grad_(requires_grad)
        if self.freeze_encoder_bn:
            self.encoder.eval()

    @torch.no_grad()
    def set_reference(self, ref_image: Tensor) -> None:
        """Store the reference image (1, 3, H, W) in [0, 1] and its level-3/4/5 features.

        The encoder runs in eval mode (trap T8), whatever mode it was in.
        """
        was_training = self.encoder.training
        self.encoder.eval()
        features = self.encoder(ref_image.to(self.ref_image.device, self.ref_image.dtype))
        self.encoder.train(was_training)
        # copy in place where the shape allows: DDP keeps references to the buffer tensors it syncs
        values = {"ref_image": ref_image.detach().to(self.ref_image)}
        values.update({f"ref_feat_{level}": features[level - 1].detach() for level in RBAM_LEVELS})
        for name, value in values.items():
            buffer = self.get_tensor_attribute(name)
            if buffer.shape == value.shape:
                buffer.copy_(value)
            else:
                setattr(self, name, value.clone())
        self.ref_ready.fill_(True)

    def repair(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``F_out^l = RBAM_l(Phi_l, F_ref^l)`` for l = 3, 4, 5."""
        return [
            rbam(features[level - 1], ref)
            for rbam, level, ref in zip(self.rbam, RBAM_LEVELS, self.reference_features, strict=True)
        ]

    def discriminate(self, features: Sequence[Tensor], rec_features: Sequence[Tensor]) -> list[Tensor]:
        """FDM logits for levels 1, 2, 3."""
        return [
            fdm(features[level - 1], rec_features[level - 1]) for fdm, level in zip(self.fdm, MSFDM_LEVELS, strict=True)
        ]

    def anomaly_map(self, logits: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Eq. 11: weighted sum of the per-level P(anomalous), upsampled to ``size``."""
        maps = [torch.softmax(lg, dim=1)[:, 1:2] for lg in logits]
        return sum(
            w * F.interpolate(am, size=tuple(size), mode="bilinear", align_corners=self.am_align_corners)
            for w, am in zip(self.am_weights, maps, strict=True)
        )

    def forward(
        self,
        images: Tensor,
        clean_images: Tensor | None = None,
        phase: int = 2,
        detach_rec_for_seg: bool = False,
    ) -> InferenceBatch | dict[str, Tensor | list[Tensor]]:
        """Inference (eval mode) or one training phase (train mode).

        Args:
            images: (B, 3, H, W) in [0, 1]; the defective ``I_ad`` in training.
            clean_images: training only: the clean ``I_o`` the defects were pasted into.
            phase: training only: 1 (encoder + decoder) or 2 (RBAM + decoder + MSFDM).
            detach_rec_for_seg: A25: stop the segmentation gradient at the reconstruction.

        Returns:
            Eval: ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H, W))``.
            Phase 1: ``reconstruction`` of the clean images, ``clean_features`` and
            ``defective_features`` (5 levels, one joint encoder pass, trap T7).
            Phase 2: ``reconstruction`` of the defective images, ``repaired_features`` and
            ``clean_features`` (levels 3-5), ``logits`` (3 FDMs).
        """
        if not self.training:
            features = self.encoder(images)
            reconstruction = self.decoder(*self.repair(features))
            rec_features = self.encoder(reconstruction, num_levels=max(MSFDM_LEVELS))
            output = self.scorer(self.anomaly_map(self.discriminate(features, rec_features), images.shape[-2:]))
            if self.score_pool_size > 0:  # A11: the score of the average-pooled map
                k = self.score_pool_size
                pooled = F.avg_pool2d(output.anomaly_map, k, stride=1, padding=k // 2, count_include_pad=False)
                output = InferenceBatch(
                    pred_score=image_score(pooled, self.scorer.score_mode, self.scorer.topk_fraction),
                    anomaly_map=output.anomaly_map,
                )
            return output

        if clean_images is None:
            msg = "Training forward needs clean_images (I_o) besides the defective images (I_ad)."
            raise ValueError(msg)
        if phase == 1:  # A32: RBAM bypassed, decoder fed with the raw features of I_o
            batch = clean_images.shape[0]
            joint = self.encoder(torch.cat([clean_images, images]))
            clean_features = [f[:batch] for f in joint]
            defective_features = [f[batch:] for f in joint]
            reconstruction = self.decoder(*(clean_features[level - 1] for level in RBAM_LEVELS))
            return {
                "reconstruction": reconstruction,
                "clean_features": clean_features,
                "defective_features": defective_features,
            }
        with torch.no_grad():  # frozen encoder: targets and RBAM inputs carry no gradient
            defective_features = self.encoder(images)
            clean_features = self.encoder(clean_images)
        repaired = self.repair(defective_features)
        reconstruction = self.decoder(*repaired)
        rec_input = reconstruction.detach() if detach_rec_for_seg else reconstruction
        rec_features = self.encoder(rec_input, num_levels=max(MSFDM_LEVELS))
        return {
            "reconstruction": reconstruction,
            "repaired_features": repaired,
            "clean_features": [clean_features[level - 1] for level in RBAM_LEVELS],
            "logits": self.discriminate(defective_features, rec_features),
        }
