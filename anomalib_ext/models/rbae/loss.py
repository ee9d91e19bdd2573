"""Losses of RB-AE (both training phases).

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu, X. Wang).

Phase 1 (Eq. 14): ``100 L_rec^1 + L_per^1 + L_pixel_dis`` (Eqs. 12, 13, 2).
Phase 2 (Eq. 17): ``100 L_rec^2 + L_per^2 + L_fea_rep + L_seg`` (Eqs. 15, 16, 9, 10).
All reductions are element means (spec A19, A22); the focal loss is a 2-class softmax focal loss
with soft targets and no alpha (A24; kornia's ``FocalLoss(alpha=1)`` used by anomalib's DRAEM
gives the normal class weight 0, spec trap T1).

Example:
    >>> import torch
    >>> from anomalib_ext.models.rbae.loss import FocalLoss
    >>> round(FocalLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4)).item(), 6)   # 0.25 ln 2
    0.173287

See Also:
    - :mod:`anomalib_ext.models.rbae.torch_model`: produces the tensors these losses take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomalib_ext.models.rbae.config import Phase1Config, Phase2Config

MaskResizeMode = Literal["area", "nearest", "bilinear"]


def resize_mask(mask: Tensor, size: Sequence[int], mode: MaskResizeMode = "area") -> Tensor:
    """A17: resize a (B, 1, H, W) mask to a feature level (``area`` gives soft coverage)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mode in {"nearest", "area"}:
        return F.interpolate(mask, size=tuple(size), mode=mode)
    return F.interpolate(mask, size=tuple(size), mode=mode, align_corners=False)


class PixelDiscriminationLoss(nn.Module):
    """Pixel-level discrimination loss ``L_pixel_dis``, Eq. 2.

    ``R_l = mean_c (Phi_l(I_o) - Phi_l(I_ad))^2``, min-max normalised per sample and level,
    regressed onto the mask resized to level ``l`` with a mean squared error; averaged over the
    levels.

    Args:
        norm: A18: ``"minmax"`` (default) or ``"max"`` normalisation ``N``.
        eps: A18: epsilon of the normalisation.
        mask_resize_mode: A17: interpolation of the mask to the feature size.
    """

    def __init__(
        self, norm: Literal["minmax", "max"] = "minmax", eps: float = 1e-8, mask_resize_mode: MaskResizeMode = "area"
    ) -> None:
        super().__init__()
        self.norm, self.eps, self.mask_resize_mode = norm, eps, mask_resize_mode

    def forward(self, clean_features: Sequence[Tensor], defective_features: Sequence[Tensor], mask: Tensor) -> Tensor:
        """Average over the given levels of the MSE between ``N(R_l)`` and the level-``l`` mask."""
        terms = []
        for clean, defective in zip(clean_features, defective_features, strict=True):
            residual = (clean - defective).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H_l, W_l)
            flat = residual.flatten(1)
            high = flat.amax(dim=1).view(-1, 1, 1, 1)
            low = flat.amin(dim=1).view(-1, 1, 1, 1) if self.norm == "minmax" else torch.zeros_like(high)
            normalised = (residual - low) / (high - low + self.eps)
            target = resize_mask(mask, residual.shape[-2:], self.mask_resize_mode)
            terms.append(F.mse_loss(normalised, target))
        return torch.stack(terms).mean()


class PerceptualLoss(nn.Module):
    """Perceptual loss ``L_per``, Eqs. 13 and 16: mean over taps of the mean absolute difference.

    The target branch runs without gradient; the reconstruction branch keeps it (trap T5).

    Args:
        network: a frozen module returning a list of tap activations of a [0, 1] image.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, targets: Tensor, reconstructions: Tensor) -> Tensor:
        """``1/L sum_l mean |D_l(targets) - D_l(reconstructions)|``."""
        with torch.no_grad():
            target_taps = self.network(targets)
        taps = self.network(reconstructions)
        return torch.stack([F.l1_loss(t, r) for t, r in zip(target_taps, taps, strict=True)]).mean()


class FeatureRepairLoss(nn.Module):
    """Feature repair loss ``L_fea_rep``, Eq. 9: ``1/(l2 - l1) sum_l MSE(F_out^l, F_o^l)``.

    Args:
        denominator: A23: the prefactor's denominator (paper literally ``l2 - l1 = 2`` over three
            levels; 3 gives a true mean).
    """

    def __init__(self, denominator: float = 2.0) -> None:
        super().__init__()
        self.denominator = float(denominator)

    def forward(self, repaired_features: Sequence[Tensor], clean_features: Sequence[Tensor]) -> Tensor:
        """Sum of the per-level MSEs divided by ``denominator``."""
        terms = [F.mse_loss(r, c) for r, c in zip(repaired_features, clean_features, strict=True)]
        return torch.stack(terms).sum() / self.denominator


class FocalLoss(nn.Module):
    """Two-class softmax focal loss with soft targets, one FDM term ``FL_i`` of Eq. 10.

    ``-[y (1 - p_1)^gamma log p_1 + (1 - y)(1 - p_0)^gamma log p_0]`` averaged over B, H, W.

    Args:
        gamma: A24: focusing parameter (default 2).
        alpha: A24: optional weight of the anomalous class (normal class ``1 - alpha``); ``None``
            (default) weighs both classes 1.
        eps: clamp of the probabilities before the log.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, eps: float = 1e-12) -> None:
        super().__init__()
        self.gamma, self.alpha, self.eps = float(gamma), alpha, eps

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` (B, 2, H, W), ``target`` (B, 1, H, W) in [0, 1] at the same size."""
        probs = torch.softmax(logits, dim=1).clamp_min(self.eps)
        p0, p1 = probs[:, 0:1], probs[:, 1:2]
        positive = target * (1 - p1).pow(self.gamma) * torch.log(p1)
        negative = (1 - target) * (1 - p0).pow(self.gamma) * torch.log(p0)
        if self.alpha is not None:
            positive, negative = self.alpha * positive, (1 - self.alpha) * negative
        return -(positive + negative).mean()


class SegmentationLoss(nn.Module):
    """``L_seg``, Eq. 10: mean over the FDM levels of the focal loss against the resized mask.

    Args:
        gamma: A24: focal gamma.
        alpha: A24: focal alpha (``None``: none).
        mask_resize_mode: A17: interpolation of the mask to each level.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = None, mask_resize_mode: MaskResizeMode = "area"
    ) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma, alpha)
        self.mask_resize_mode = mask_resize_mode

    def forward(self, logits: Sequence[Tensor], mask: Tensor) -> Tensor:
        """Average focal loss of the per-level logits."""
        terms = [self.focal(lg, resize_mask(mask, lg.shape[-2:], self.mask_resize_mode)) for lg in logits]
        return torch.stack(terms).mean()


class RbaeLoss(nn.Module):
    """Total losses of both phases, Eq. 14 (phase 1) and Eq. 17 (phase 2).

    Args:
        perceptual_network: frozen network of ``L_per`` (VGG-16 in the paper).
        phase1: weights and ``L_pixel_dis`` settings of Eq. 14
            (:class:`~anomalib_ext.models.rbae.config.Phase1Config`).
        phase2: weights, ``L_fea_rep`` and focal settings of Eq. 17
            (:class:`~anomalib_ext.models.rbae.config.Phase2Config`).
        mask_resize_mode: A17: interpolation of the defect mask to the feature levels.
    """

    def __init__(
        self,
        perceptual_network: nn.Module,
        phase1: Phase1Config = Phase1Config(),
        phase2: Phase2Config = Phase2Config(),
        mask_resize_mode: MaskResizeMode = "area",
    ) -> None:
        super().__init__()
        self.perceptual = PerceptualLoss(perceptual_network)
        self.pixel_dis = PixelDiscriminationLoss(phase1.pixel_dis_norm, phase1.pixel_dis_eps, mask_resize_mode)
        self.fea_rep = FeatureRepairLoss(phase2.fea_rep_denominator)
        self.seg = SegmentationLoss(phase2.focal_gamma, phase2.focal_alpha, mask_resize_mode)
        self.pixel_dis_levels = tuple(int(level) for level in phase1.pixel_dis_levels)
        self.w1 = (phase1.w_rec, phase1.w_per, phase1.w_pixel_dis)
        self.w2 = (phase2.w_rec, phase2.w_per, phase2.w_fea_rep, phase2.w_seg)

    def phase1(self, clean: Tensor, mask: Tensor, outputs: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 14 from the phase-1 outputs of :class:`RbaeModel`; returns (total, terms)."""
        rec = outputs["reconstruction"]
        idx = [level - 1 for level in self.pixel_dis_levels]
        terms = {
            "rec": F.mse_loss(rec, clean),
            "per": self.perceptual(clean, rec),
            "pixel_dis": self.pixel_dis(
                [outputs["clean_features"][i] for i in idx], [outputs["defective_features"][i] for i in idx], mask
            ),
        }
        total = sum(w * t for w, t in zip(self.w1, terms.values(), strict=True))
        return total, terms

    def phase2(self, clean: Tensor, mask: Tensor, outputs: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 17 from the phase-2 outputs of :class:`RbaeModel`; returns (total, terms)."""
        rec = outputs["reconstruction"]
        terms = {
            "rec": F.mse_loss(rec, clean),
            "per": self.perceptual(clean, rec),
            "fea_rep": self.fea_rep(outputs["repaired_features"], outputs["clean_features"]),
            "seg": self.seg(outputs["logits"], mask),
        }
        total = sum(w * t for w, t in zip(self.w2, terms.values(), strict=True))
        return total, terms
