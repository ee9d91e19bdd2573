"""N2N: Noise-to-Norm Reconstruction for Industrial Anomaly Detection and Localization.

Paper: Deng, Sun, Zhuang, Gong, Applied Sciences 13, 12436 (2023),
https://doi.org/10.3390/app132212436

N2N trains a reconstruction network from scratch on normal images blended with Gaussian noise,
``x = (1 - lambda) x0 + lambda eps`` (Eq. 1), to give back the clean image ("noise to norm").
The same noise is applied at test time, so a defect's local appearance is partly hidden and the
network restores normal texture instead of copying the defect. The anomaly map is the per-pixel
MS-SSIM + Gaussian-weighted L1 error between the reconstruction and the clean input (Eq. 9); the
image score is its maximum. No pretrained backbone, no memory bank, no synthetic defects.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import N2N
    >>> datamodule = MVTecAD(category="bottle")  # doctest: +SKIP
    >>> model = N2N(base_channels=32)  # doctest: +SKIP
    >>> engine = Engine(max_epochs=50)  # doctest: +SKIP
    >>> engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
    >>> engine.test(model, datamodule=datamodule)  # doctest: +SKIP

See Also:
    - :class:`anomalib_ext.models.n2n.torch_model.N2NModel`: the PyTorch model.
    - :class:`anomalib_ext.models.n2n.loss.N2NLoss`: the loss (Eq. 9).
    - :class:`anomalib_ext.augment.NoiseBlend`: the noise blending (Eq. 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import Batch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils import ValSplitMode
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.components import AnomalibExtModule, group_arguments

from .config import ErrorMapConfig, NetworkConfig, NoiseConfig, TrainingConfig
from .loss import N2NLoss
from .openvino import NETWORK_OP_TYPES, keep_error_map_precise
from .torch_model import N2NModel

logger = logging.getLogger(__name__)

__all__ = ["N2N"]

#: Per-channel mean and std of the default pre-processor's normalisation (Sec. 3.1, A26).
NORM_MEAN, NORM_STD = 0.5, 0.5


class N2N(AnomalibExtModule, AnomalibModule):
    """N2N Lightning module: noise-to-norm reconstruction with an M-net.

    The input size and the normalisation come from the pre-processor (default: the paper's
    Resize(256, 256) + Normalize(0.5, 0.5), :meth:`configure_pre_processor`); the fixed test-time
    noise is drawn at that size.

    Args:
        base_channels: A2: width ``C`` of the M-net (channel plan C, 2C, 4C, 8C).
        input_unshuffle: Speed option, not in the paper: 1 (the paper) runs the M-net at the input
            resolution; 2 folds 2x2 pixel blocks into channels first (PixelUnshuffle, as FFDNet),
            runs the M-net at half resolution and unfolds its output (PixelShuffle): about 4x less
            network work, reconstruction and map still at full resolution.
        noise_lambda: Blend weight lambda of Eq. 1 (paper: 0.3, Table 4).
        lr: A20: initial AdamW learning rate (the paper's 1e-6 equals eta_min; typo).
        t_max: A22: cosine annealing period in epochs (paper: 100).
        early_stopping_patience: A24: epochs without a lower monitored loss before stopping (paper:
            20); 0 = off.
        restore_best_weights: A24: continue from the epoch with the lowest monitored loss at the end
            of fit (the checkpoint keeps that epoch).
        network: M-net ablations (:class:`~anomalib_ext.models.n2n.config.NetworkConfig`).
        noise: Noise ablations and seeds (:class:`~anomalib_ext.models.n2n.config.NoiseConfig`).
        error_map: MS-SSIM + L1 error, map smoothing and image score
            (:class:`~anomalib_ext.models.n2n.config.ErrorMapConfig`).
        training: Loss reduction, AdamW, schedule and early-stopping monitor
            (:class:`~anomalib_ext.models.n2n.config.TrainingConfig`).
        **components: anomalib's ``pre_processor``, ``post_processor``, ``evaluator`` and ``visualizer``
            (:class:`~anomalib.models.components.AnomalibModule`); ``True``, the default, takes this
            model's ``configure_*`` method, for the pre-processor Resize(256, 256) + Normalize(0.5, 0.5).
    """

    #: INT8_PTQ quantises the reconstruction network's operations only (the types that also bound the
    #: float-precision error map, :data:`~anomalib_ext.models.n2n.openvino.NETWORK_OP_TYPES`); the error map
    #: (MS-SSIM's Gaussian windows are grouped convolutions) and everything after it stay in float (see
    #: ``AnomalibExtModule._post_training_quantization_ov``).
    int8_quantised_types = tuple(sorted(NETWORK_OP_TYPES))

    @group_arguments
    def __init__(
        self,
        base_channels: int = 64,
        input_unshuffle: int = 1,
        noise_lambda: float = 0.3,
        lr: float = 1e-4,
        t_max: int = 100,
        early_stopping_patience: int = 20,
        restore_best_weights: bool = True,
        network: NetworkConfig = NetworkConfig(),
        noise: NoiseConfig = NoiseConfig(),
        error_map: ErrorMapConfig = ErrorMapConfig(),
        training: TrainingConfig = TrainingConfig(),
        **components: Any,
    ) -> None:
        super().__init__(**components)
        self.base_channels = base_channels
        self.input_unshuffle = input_unshuffle
        self.noise_lambda = noise_lambda
        self.network_config = network
        self.noise_config = noise
        self.error_map_config = error_map
        self.training_config = training
        self.lr = lr
        self.t_max = t_max
        self.early_stopping_patience = early_stopping_patience
        self.restore_best_weights = restore_best_weights
        self._build()

    def _build(self) -> None:
        """The torch model and the loss at the pre-processor's input size and normalisation."""
        image_size = self.fixed_input_size("its test-time noise is drawn once")
        norm_mean, norm_std = self._normalisation()
        self._built_for = (image_size, norm_mean, norm_std)
        self.model = N2NModel(
            image_size=image_size,
            base_channels=self.base_channels,
            input_unshuffle=self.input_unshuffle,
            noise_lambda=self.noise_lambda,
            network=self.network_config,
            noise=self.noise_config,
            error_map=self.error_map_config,
            norm_mean=norm_mean,
            norm_std=norm_std,
        )
        self.loss = N2NLoss(
            self.error_map_config, norm_mean=norm_mean, norm_std=norm_std, reduction=self.training_config.loss_reduction
        )

    def _normalisation(self) -> tuple[float, float]:
        """The pre-processor's per-channel normalisation ``(mean, std)``; ``(0, 1)`` without ``Normalize``.

        The noise (``space="pixel"``) and the error map (``metric_space="unit"``) undo it, so it must be
        the same for the three channels.
        """
        transform = self.pre_processor.transform if self.pre_processor else None
        normalize = extract_transforms_by_type(transform, Normalize) if transform is not None else []
        if not normalize:
            return 0.0, 1.0
        mean, std = normalize[-1].mean, normalize[-1].std
        if len(set(mean)) != 1 or len(set(std)) != 1:
            msg = (
                f"N2N needs the same normalisation for every channel (Sec. 3.1: 0.5, 0.5); got mean={mean}, std={std}."
            )
            raise ValueError(msg)
        return float(mean[0]), float(std[0])

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """The ablation groups saved in the hyper-parameters (``weights_only`` loading)."""
        return (NetworkConfig, NoiseConfig, ErrorMapConfig, TrainingConfig)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the saved pre-processor, then rebuild the model if its input size or normalisation differ."""
        super().on_load_checkpoint(checkpoint)
        if (tuple(self.input_size), *self._normalisation()) != self._built_for:
            self._build()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize (antialiased) and normalise with mean = std = 0.5 per channel (Sec. 3.1), no ImageNet stats.

        Args:
            image_size: Target ``(H, W)``; default (256, 256) (Sec. 4.2).

        Returns:
            The pre-processor.
        """
        image_size = tuple(image_size) if image_size else (256, 256)
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    Normalize(mean=[NORM_MEAN] * 3, std=[NORM_STD] * 3),
                ]
            ),
        )

    def setup(self, stage: str) -> None:
        """Before fitting: refuse to select the epoch on test images (A24, spec T12)."""
        if stage == "fit":
            self._check_selection_is_not_on_test_images()

    def _selects_on_validation(self) -> bool:
        selects = self.early_stopping_patience > 0 or self.restore_best_weights
        return selects and self.training_config.early_stopping_monitor == "val_loss"

    def _check_selection_is_not_on_test_images(self) -> None:
        """Raise if early stopping or best-checkpoint selection would watch the test set."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        mode = getattr(datamodule, "val_split_mode", None)
        if not self._selects_on_validation() or mode is None or mode != ValSplitMode.SAME_AS_TEST:
            return
        msg = (
            f"N2N selects its epoch on val_loss (early_stopping_patience={self.early_stopping_patience}, "
            f"restore_best_weights={self.restore_best_weights}) but the validation set of "
            f"{type(datamodule).__name__} is its test set (val_split_mode='same_as_test', the default of "
            "anomalib's MVTecAD-like datamodules): early stopping and the kept epoch would look at the test "
            "images. Hold out normal training images as the paper does: --data.val_split_mode from_train "
            "--data.val_split_ratio 0.2 --data.seed 42 (API: val_split_mode='from_train', val_split_ratio=0.2), "
            "or train a fixed schedule: --model.early_stopping_patience 0 --model.restore_best_weights false."
        )
        raise ValueError(msg)

    def on_fit_start(self) -> None:
        """The shared fit start, with the training noise seeded by ``noise.train_seed`` plus the rank.

        The generator is on the CPU: the same seed gives the same noise whatever device trains.
        """
        super().on_fit_start()
        self.generator = rank_generator(self.noise_config.train_seed, self.global_rank)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Blend fresh noise, reconstruct, and minimise Eq. (9) against the clean image."""
        del args, kwargs
        reconstruction, clean = self.model(batch.image, generator=self.generator)
        loss = self.loss(reconstruction, clean)
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch.image.shape[0],
        )
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps with the fixed eval noise; logs ``val_loss`` = mean map (= the loss, A24)."""
        del args, kwargs
        predictions = self.model(batch.image)
        self.log(
            "val_loss",
            predictions.anomaly_map.mean(),
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch.image.shape[0],
        )
        return batch.update(**predictions._asdict())

    def on_fit_end(self) -> None:
        """A24: continue from the best checkpoint (lowest monitored loss), as testing and export will.

        The checkpoint holds the network and the post-processor statistics of the same epoch, so the
        model in memory, ``weights/lightning/model.ckpt`` and an export of it are the same model.
        """
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if self.restore_best_weights else ""
        if best:
            state = self.trainer.strategy.load_checkpoint(best)["state_dict"]
            self.load_state_dict(state)
            logger.info(
                "N2N: restored the weights with %s = %.6f.",
                self.training_config.early_stopping_monitor,
                checkpoint.best_model_score,
            )
        super().on_fit_end()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (betas (0.5, 0.999)) with cosine annealing stepped once per epoch (Sec. 4.2)."""
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.lr,
            betas=self.training_config.betas,
            weight_decay=self.training_config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.t_max, eta_min=self.training_config.eta_min
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Anomalib's component callbacks, a best-epoch checkpoint and early stopping on the monitored loss (A24)."""
        callbacks = list(super().configure_callbacks())
        if self.restore_best_weights:
            # Replaces the Engine's checkpoint (same place and name) by one that keeps the best epoch.
            callbacks.append(
                ModelCheckpoint(
                    dirpath=None
                    if self._trainer is None
                    else Path(self.trainer.default_root_dir) / "weights" / "lightning",
                    filename="model",
                    monitor=self.training_config.early_stopping_monitor,
                    mode="min",
                    auto_insert_metric_name=False,
                ),
            )
        if self.early_stopping_patience > 0:
            callbacks.append(
                EarlyStopping(
                    monitor=self.training_config.early_stopping_monitor,
                    patience=self.early_stopping_patience,
                    mode="min",
                    min_delta=0.0,
                ),
            )
        return callbacks

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """The OpenVINO export of anomalib, with the error map kept in f32 at any device precision.

        At OpenVINO's default CPU precision (bf16 where the CPU has it) the network runs in bf16 and
        the error map in f32: the Gaussian windows of MS-SSIM hang oneDNN's bf16 depthwise kernel and
        their moments lose SSIM's variances in bf16 (:mod:`anomalib_ext.models.n2n.openvino`).
        Arguments as :meth:`anomalib.models.components.base.export_mixin.ExportMixin.to_openvino`.
        """
        path = super().to_openvino(*args, **kwargs)
        keep_error_map_precise(path)
        return path
