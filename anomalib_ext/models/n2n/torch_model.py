"""PyTorch model of N2N: noise blending, M-net reconstruction and the per-pixel error map.

Paper: "Noise-to-Norm Reconstruction for Industrial Anomaly Detection and Localization" (Deng,
Sun, Zhuang, Gong; Applied Sciences 13, 12436, 2023).

The clean (normalised) image is blended with Gaussian noise (Eq. 1), the reconstruction network
restores it, and the per-pixel MS-SSIM + Gaussian-L1 error between the reconstruction and the
clean image is the anomaly map; the image score is its maximum. In training mode the noise is
fresh (from the generator passed in) and ``forward`` returns ``(reconstruction, clean)`` for the
loss; in eval mode the noise is the fixed, seeded ``eval_noise`` buffer (A10), so the whole path
is deterministic and exportable, and ``forward`` returns an :class:`InferenceBatch`.

Example:
    >>> import torch
    >>> from anomalib_ext.models.n2n.torch_model import N2NModel
    >>> model = N2NModel(image_size=(64, 64), base_channels=16).eval()
    >>> out = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    >>> out.anomaly_map.shape, out.pred_score.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2]))

See Also:
    - :mod:`anomalib_ext.models.n2n.lightning_model`: the Lightning module ``N2N``.
    - :mod:`anomalib_ext.models.n2n.components`: the reconstruction network.
    - :mod:`anomalib_ext.models.n2n.loss`: the error map / loss (Eq. 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from torch import Tensor, nn

from anomalib_ext.augment import NoiseBlend
from anomalib_ext.models.n2n.components import N2NReconstructionNetwork
from anomalib_ext.models.n2n.loss import N2NLoss

SCORE_MODES = ("max", "mean", "topk_mean")
EVAL_NOISE_MODES = ("fixed", "random")


class N2NModel(nn.Module):
    """Noise blending + reconstruction network + per-pixel error map.

    Args:
        image_size: Input ``(H, W)``; fixes the shape of the ``eval_noise`` buffer. Both sides
            must be divisible by ``2 ** (depth - 1)``.
        base_channels: A2: network width ``C``.
        depth: A1: number of M-net levels.
        use_residual_attention: A3: RAM blocks, or the 1x1-conv ablation.
        ram_reduction: A3: channel-attention reduction in RAM.
        ram_activation: A8: ``"relu"`` or ``"prelu"`` in RAM.
        skff_reduction: A6: SKFF reduction.
        share_input_stem: A4: one stem shared by all pyramid levels.
        skip_conv: A5: 3x3 conv on skip connections.
        side_upsample_first: A6: upsample side outputs before their conv.
        global_residual: A7: add the noisy input to the network output.
        input_unshuffle: Speed option: run the M-net on ``f x f`` pixel blocks folded into channels
            (1 = the paper; see :class:`N2NReconstructionNetwork`).
        noise_lambda: Eq. 1 blend weight lambda (paper 0.3).
        noise_mean: A9: mean of eps.
        noise_std: A9: standard deviation of eps.
        noise_space: A9: ``"normalized"`` (literal Eq. 1) or ``"pixel"``.
        noise_at_test: A10: blend noise at eval too (False: feed the clean image).
        eval_noise: A10: ``"fixed"`` (seeded buffer; exportable) or ``"random"`` (fresh draws).
        eval_noise_seed: A10: seed of the fixed eval noise.
        eval_noise_samples: A29: number K of fixed noise draws; maps are averaged over them.
        norm_mean: Mean of the input normalisation (noise ``"pixel"`` space, metric ``"unit"``).
        norm_std: Std of the input normalisation.
        msssim_sigmas: A13: Gaussian sigmas.
        ssim_kernel_size: A14: window size.
        ssim_padding: A14: ``"zeros"`` or ``"reflect"``.
        ssim_k1: A12: K1.
        ssim_k2: A12: K2.
        ssim_constants_squared: A12: ``C = (K L) ** 2``.
        ssim_data_range: A11/A12: data range in the unit metric space.
        loss_alpha: A15: MS-SSIM weight alpha.
        metric_space: A11: ``"unit"`` or ``"normalized"``.
        channel_reduction: A16: ``"mean"`` or ``"max"`` over RGB.
        anomaly_map_blur_sigma: A18: extra Gaussian smoothing of the map (0 = off).
        score_mode: A19: ``"max"``, ``"mean"`` or ``"topk_mean"`` of the map.
        score_topk_ratio: A19: fraction of pixels averaged by ``"topk_mean"``.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (256, 256),
        base_channels: int = 64,
        depth: int = 4,
        use_residual_attention: bool = True,
        ram_reduction: int = 8,
        ram_activation: str = "relu",
        skff_reduction: int = 8,
        share_input_stem: bool = True,
        skip_conv: bool = True,
        side_upsample_first: bool = False,
        global_residual: bool = True,
        input_unshuffle: int = 1,
        noise_lambda: float = 0.3,
        noise_mean: float = 0.5,
        noise_std: float = 0.5,
        noise_space: str = "normalized",
        noise_at_test: bool = True,
        eval_noise: str = "fixed",
        eval_noise_seed: int = 0,
        eval_noise_samples: int = 1,
        norm_mean: float = 0.5,
        norm_std: float = 0.5,
        msssim_sigmas: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
        ssim_kernel_size: int = 33,
        ssim_padding: str = "zeros",
        ssim_k1: float = 0.01,
        ssim_k2: float = 0.03,
        ssim_constants_squared: bool = True,
        ssim_data_range: float = 1.0,
        loss_alpha: float = 0.84,
        metric_space: str = "unit",
        channel_reduction: str = "mean",
        anomaly_map_blur_sigma: float = 0.0,
        score_mode: str = "max",
        score_topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        height, width = (int(v) for v in image_size)
        factor = int(input_unshuffle) * 2 ** (depth - 1)
        if height % factor or width % factor or height < factor or width < factor:
            msg = (
                f"image_size={tuple(image_size)} is invalid: both sides must be positive multiples of "
                f"input_unshuffle * 2 ** (depth - 1) = {factor}."
            )
            raise ValueError(msg)
        if ssim_padding == "reflect" and min(height, width) <= ssim_kernel_size // 2:
            msg = f"image_size={tuple(image_size)} is too small for reflect padding of {ssim_kernel_size // 2} px."
            raise ValueError(msg)
        if eval_noise not in EVAL_NOISE_MODES:
            msg = f"eval_noise={eval_noise!r} is invalid: accepted values are {EVAL_NOISE_MODES}."
            raise ValueError(msg)
        if eval_noise_samples < 1:
            msg = f"eval_noise_samples={eval_noise_samples} is invalid: expected an integer >= 1."
            raise ValueError(msg)
        if score_mode not in SCORE_MODES:
            msg = f"score_mode={score_mode!r} is invalid: accepted values are {SCORE_MODES}."
            raise ValueError(msg)
        if not 0.0 < score_topk_ratio <= 1.0:
            msg = f"score_topk_ratio={score_topk_ratio} is invalid: expected a value in (0, 1]."
            raise ValueError(msg)
        if anomaly_map_blur_sigma < 0:
            msg = f"anomaly_map_blur_sigma={anomaly_map_blur_sigma} is invalid: expected a value >= 0."
            raise ValueError(msg)
        self.image_size = (height, width)
        self.noise_at_test = noise_at_test
        self.eval_noise_mode = eval_noise
        self.score_mode = score_mode
        self.score_topk_ratio = score_topk_ratio
        self.noise_blend = NoiseBlend(
            noise_lambda=noise_lambda,
            noise_mean=noise_mean,
            noise_std=noise_std,
            noise_space=noise_space,
            norm_mean=norm_mean,
            norm_std=norm_std,
        )
        self.network = N2NReconstructionNetwork(
            base_channels=base_channels,
            depth=depth,
            use_residual_attention=use_residual_attention,
            ram_reduction=ram_reduction,
            ram_activation=ram_activation,
            skff_reduction=skff_reduction,
            share_input_stem=share_input_stem,
            skip_conv=skip_conv,
            side_upsample_first=side_upsample_first,
            global_residual=global_residual,
            input_unshuffle=input_unshuffle,
        )
        self.error = N2NLoss(
            sigmas=msssim_sigmas,
            kernel_size=ssim_kernel_size,
            alpha=loss_alpha,
            k1=ssim_k1,
            k2=ssim_k2,
            constants_squared=ssim_constants_squared,
            data_range=ssim_data_range,
            padding=ssim_padding,
            channel_reduction=channel_reduction,
            metric_space=metric_space,
            norm_mean=norm_mean,
            norm_std=norm_std,
        )
        self.blur = GaussianBlur2d(sigma=anomaly_map_blur_sigma, channels=1) if anomaly_map_blur_sigma > 0 else None
        # A10/A29: fixed test-time noise, drawn once from a private seeded generator (never the
        # global RNG, so every DDP rank and every reload gets the same tensor); persistent so that
        # checkpoints and exported graphs carry it.
        fixed_noise = self.noise_blend.sample_noise(
            (eval_noise_samples, 3, height, width),
            generator=torch.Generator().manual_seed(eval_noise_seed),
        )
        self.register_buffer("eval_noise", fixed_noise)

    def _noisy_eval_input(self, clean: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B * K, 3, H, W)`` blended with the K buffered noise draws."""
        if not self.noise_at_test:
            return clean
        if self.eval_noise_mode == "random":
            return self.noise_blend(clean)[0]
        if not torch.compiler.is_compiling() and tuple(clean.shape[-2:]) != tuple(self.eval_noise.shape[-2:]):
            msg = (
                f"N2N was built for image_size={tuple(self.eval_noise.shape[-2:])} (its fixed eval noise) but got "
                f"images of size {tuple(clean.shape[-2:])}; use a pre-processor that resizes to image_size."
            )
            raise ValueError(msg)
        samples = self.eval_noise.shape[0]
        if samples == 1:
            return self.noise_blend.blend(clean, self.eval_noise)
        batch = clean.shape[0]
        repeated = clean.unsqueeze(1).expand(-1, samples, -1, -1, -1).flatten(0, 1)
        noise = self.eval_noise.unsqueeze(0).expand(batch, -1, -1, -1, -1).flatten(0, 1)
        return self.noise_blend.blend(repeated, noise)

    def anomaly_score(self, anomaly_map: Tensor) -> Tensor:
        """Image score ``(B,)`` from the ``(B, 1, H, W)`` map (A19)."""
        if self.score_mode == "mean":
            return anomaly_map.mean(dim=(-3, -2, -1))
        if self.score_mode == "topk_mean":
            flat = anomaly_map.flatten(1)
            k = max(1, int(self.score_topk_ratio * flat.shape[1]))
            return flat.topk(k, dim=1).values.mean(dim=1)
        return anomaly_map.amax(dim=(-3, -2, -1))

    def forward(
        self, clean: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor] | InferenceBatch:
        """Run N2N on a normalised batch ``(B, 3, H, W)``.

        Args:
            clean: Pre-processed (resized, normalised) images.
            generator: Training only: source of the fresh noise (seeded per rank by the Lightning
                module); ``None`` uses the global RNG.

        Returns:
            Training: ``(reconstruction, clean)``, both ``(B, 3, H, W)``.
            Eval: ``InferenceBatch(pred_score=(B,), anomaly_map=(B, 1, H, W))``.
        """
        if self.training:
            noisy, _ = self.noise_blend(clean, generator=generator)
            return self.network(noisy), clean
        noisy = self._noisy_eval_input(clean)
        reconstruction = self.network(noisy)
        samples = self.eval_noise.shape[0] if self.noise_at_test and self.eval_noise_mode == "fixed" else 1
        target = clean if samples == 1 else clean.repeat_interleave(samples, dim=0)
        anomaly_map = self.error.error_map(reconstruction, target)
        if samples > 1:
            anomaly_map = anomaly_map.unflatten(0, (clean.shape[0], samples)).mean(dim=1)
        if self.blur is not None:
            anomaly_map = self.blur(anomaly_map)
        return InferenceBatch(pred_score=self.anomaly_score(anomaly_map), anomaly_map=anomaly_map)
