"""PyTorch model of N2N: noise blending, M-net reconstruction and the per-pixel error map.

Paper: "Noise-to-Norm Reconstruction for Industrial Anomaly Detection and Localization" (Deng,
Sun, Zhuang, Gong; Applied Sciences 13, 12436, 2023).

The clean (normalised) image is blended with Gaussian noise (Eq. 1), the reconstruction network
restores it, and the per-pixel MS-SSIM + Gaussian-L1 error between the reconstruction and the
clean image is the anomaly map; the image score is its maximum (:class:`AnomalyScorer`). In training mode the noise is
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
from dataclasses import asdict

import torch
from anomalib.data import InferenceBatch
from torch import Tensor, nn

from anomalib_ext.augment import NoiseBlend
from anomalib_ext.models.components import AnomalyScorer

from .components import N2NReconstructionNetwork
from .config import ErrorMapConfig, NetworkConfig, NoiseConfig
from .loss import N2NLoss


class N2NModel(nn.Module):
    """Noise blending + reconstruction network + per-pixel error map.

    Args:
        image_size: Input ``(H, W)``; fixes the shape of the ``eval_noise`` buffer. Both sides
            must be multiples of ``input_unshuffle * 2 ** (network.depth - 1)``.
        base_channels: A2: network width ``C``.
        input_unshuffle: Speed option: run the M-net on ``f x f`` pixel blocks folded into channels
            (1 = the paper; see :class:`N2NReconstructionNetwork`).
        noise_lambda: Eq. 1 blend weight lambda (paper 0.3).
        network: The M-net's ablations (:class:`~anomalib_ext.models.n2n.config.NetworkConfig`).
        noise: The noise's ablations (:class:`~anomalib_ext.models.n2n.config.NoiseConfig`).
        error_map: Error map, smoothing and image score (:class:`~anomalib_ext.models.n2n.config.ErrorMapConfig`).
        norm_mean: Mean of the input normalisation (noise ``"pixel"`` space, metric ``"unit"``).
        norm_std: Std of the input normalisation.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (256, 256),
        base_channels: int = 64,
        input_unshuffle: int = 1,
        noise_lambda: float = 0.3,
        network: NetworkConfig = NetworkConfig(),
        noise: NoiseConfig = NoiseConfig(),
        error_map: ErrorMapConfig = ErrorMapConfig(),
        norm_mean: float = 0.5,
        norm_std: float = 0.5,
    ) -> None:
        super().__init__()
        height, width = (int(v) for v in image_size)
        factor = int(input_unshuffle) * 2 ** (network.depth - 1)
        if height % factor or width % factor or height < factor or width < factor:
            msg = (
                f"image_size={tuple(image_size)} is invalid: both sides must be positive multiples of "
                f"input_unshuffle * 2 ** (depth - 1) = {factor}."
            )
            raise ValueError(msg)
        if error_map.padding == "reflect" and min(height, width) <= error_map.kernel_size // 2:
            msg = f"image_size={tuple(image_size)} is too small for reflect padding of {error_map.kernel_size // 2} px."
            raise ValueError(msg)
        if noise.eval_samples < 1:
            msg = f"noise.eval_samples={noise.eval_samples} is invalid: expected an integer >= 1."
            raise ValueError(msg)
        self.image_size = (height, width)
        self.noise_at_test = noise.at_test
        self.eval_noise_mode = noise.eval_mode
        self.noise_blend = NoiseBlend(
            noise_lambda=noise_lambda,
            noise_mean=noise.mean,
            noise_std=noise.std,
            noise_space=noise.space,
            norm_mean=norm_mean,
            norm_std=norm_std,
        )
        self.network = N2NReconstructionNetwork(
            base_channels=base_channels, input_unshuffle=input_unshuffle, **asdict(network)
        )
        self.error = N2NLoss(error_map, norm_mean=norm_mean, norm_std=norm_std)
        self.scorer = AnomalyScorer(
            sigma=error_map.sigma, score_mode=error_map.score_mode, topk_fraction=error_map.topk_fraction
        )
        # A10/A29: fixed test-time noise, drawn once from a private seeded generator (never the
        # global RNG, so every DDP rank and every reload gets the same tensor); persistent so that
        # checkpoints and exported graphs carry it.
        fixed_noise = self.noise_blend.sample_noise(
            (noise.eval_samples, 3, height, width),
            generator=torch.Generator().manual_seed(noise.eval_seed),
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
        return self.scorer(anomaly_map)
