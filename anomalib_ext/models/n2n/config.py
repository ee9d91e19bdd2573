"""N2N's ablation groups: every paper ablation and spec assumption, each default written once.

The Lightning module exposes the knobs a user tunes as flat arguments (width, input folding, noise
weight, learning rate, schedule, early stopping); the rest lives in these small frozen dataclasses,
which jsonargparse reads from YAML and the command line (``--model.noise.eval_samples 4``). ``A<n>``
cites the assumption of the spec (``shared/methods/n2n.md`` section 5).

Example:
    >>> from anomalib_ext.models import N2N
    >>> from anomalib_ext.models.n2n.config import ErrorMapConfig, NetworkConfig
    >>> model = N2N(network=NetworkConfig(use_residual_attention=False))  # doctest: +SKIP
    >>> model = N2N(error_map=ErrorMapConfig(score_mode="topk"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anomalib_ext.models.components import ScoreModeName


@dataclass(frozen=True)
class NetworkConfig:
    """The M-net reconstruction network (spec 2.1), beyond its width ``base_channels``.

    Field names are the keyword arguments of
    :class:`~anomalib_ext.models.n2n.components.N2NReconstructionNetwork`.

    Args:
        depth: A1: M-net levels = SKFF streams; input sides must be multiples of
            ``input_unshuffle * 2 ** (depth - 1)``.
        use_residual_attention: A3: residual attention modules (``False``: the Table 5 ablation, 1x1 convs).
        ram_reduction: A3: channel-attention reduction inside RAM.
        ram_activation: A8: activation inside RAM.
        skff_reduction: A6: SKFF squeeze reduction.
        share_input_stem: A4: one 3x3 stem shared by all input-pyramid levels.
        skip_conv: A5: skip connections through a 3x3 conv (``False``: identity).
        side_upsample_first: A6: side outputs upsampled before their conv (default: conv first).
        global_residual: A7: add the noisy input to the output.
    """

    depth: int = 4
    use_residual_attention: bool = True
    ram_reduction: int = 8
    ram_activation: Literal["relu", "prelu"] = "relu"
    skff_reduction: int = 8
    share_input_stem: bool = True
    skip_conv: bool = True
    side_upsample_first: bool = False
    global_residual: bool = True


@dataclass(frozen=True)
class NoiseConfig:
    """The noise of Eq. 1, ``x = (1 - noise_lambda) x0 + noise_lambda eps`` (spec 2.2), beyond its weight.

    Args:
        mean: A9: mean of ``eps ~ N(0.5, 0.5)``.
        std: A9: standard deviation of ``eps`` (read as std, not variance).
        space: A9: ``"normalized"`` (literal Eq. 1 on normalised images) or ``"pixel"`` (blend in [0, 1]).
        at_test: A10: blend noise at test time too (``False``: the clean image, an ablation).
        eval_mode: A10: test-time noise: ``"fixed"`` (a seeded buffer: deterministic and exportable) or
            ``"random"`` (fresh draws; not exportable).
        eval_seed: A10: seed of the fixed test-time noise.
        eval_samples: A29: fixed noise draws averaged at test time.
        train_seed: Seed of the training noise, offset by the global rank so DDP processes draw
            different noise (not in the paper); ``None`` = the seed ``seed_everything`` set.
    """

    mean: float = 0.5
    std: float = 0.5
    space: Literal["normalized", "pixel"] = "normalized"
    at_test: bool = True
    eval_mode: Literal["fixed", "random"] = "fixed"
    eval_seed: int = 0
    eval_samples: int = 1
    train_seed: int | None = 0


@dataclass(frozen=True)
class ErrorMapConfig:
    """The per-pixel MS-SSIM + Gaussian-L1 error (Eqs. 2-9, spec 2.3): loss, anomaly map and image score.

    Args:
        msssim_sigmas: A13: ascending Gaussian sigmas of the MS-SSIM bank (Zhao et al.); the last is sigma_M.
        kernel_size: A14: odd window size shared by all sigmas (``4 sigma_M + 1``).
        padding: A14: border handling of the windows.
        k1: A12: SSIM's K1 (the paper's "C1 = 0.01").
        k2: A12: SSIM's K2 (the paper's "C2 = 0.03").
        constants_squared: A12: ``C = (K L) ** 2`` (``False``: the paper's literal ``C = K``).
        data_range: A11/A12: data range ``L`` in the ``"unit"`` metric space.
        alpha: A15: weight of the MS-SSIM term.
        metric_space: A11: ``"unit"`` (images mapped back to [0, 1]) or ``"normalized"`` (data range 2).
        channel_reduction: A16: reduction of the per-channel maps over RGB.
        sigma: A18: extra Gaussian smoothing of the anomaly map, in pixels (0 = none).
        score_mode: A19: image score from the map (``topk``: mean of the ``topk_fraction`` highest pixels).
        topk_fraction: A19: fraction of pixels averaged by ``score_mode="topk"``.
    """

    msssim_sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    kernel_size: int = 33
    padding: Literal["zeros", "reflect"] = "zeros"
    k1: float = 0.01
    k2: float = 0.03
    constants_squared: bool = True
    data_range: float = 1.0
    alpha: float = 0.84
    metric_space: Literal["unit", "normalized"] = "unit"
    channel_reduction: Literal["mean", "max"] = "mean"
    sigma: float = 0.0
    score_mode: ScoreModeName = "max"
    topk_fraction: float = 0.01


@dataclass(frozen=True)
class TrainingConfig:
    """Loss reduction, optimiser and schedule details (Sec. 4.2, spec 2.4), beyond ``lr`` and ``t_max``.

    Args:
        loss_reduction: A17: ``"mean"`` or ``"sum"`` of the per-pixel loss map.
        betas: AdamW betas (paper: (0.5, 0.999)).
        weight_decay: A21: AdamW weight decay (PyTorch's default).
        eta_min: A22: minimum of the cosine annealing (paper: 1e-6).
        early_stopping_monitor: A24: the loss that early stopping and the best-epoch checkpoint watch.
    """

    loss_reduction: Literal["mean", "sum"] = "mean"
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.01
    eta_min: float = 1e-6
    early_stopping_monitor: Literal["val_loss", "train_loss_epoch"] = "val_loss"
