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
from anomalib import LearningType
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data import Batch
from anomalib.data.utils import ValSplitMode
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.defaults import pro_evaluator
from anomalib_ext.models.n2n.loss import N2NLoss
from anomalib_ext.models.n2n.openvino import keep_error_map_precise
from anomalib_ext.models.n2n.torch_model import N2NModel
from anomalib_ext.post_processing import OrderPreservingPostProcessor

logger = logging.getLogger(__name__)

__all__ = ["N2N"]


class N2N(AnomalibModule):
    """N2N Lightning module: noise-to-norm reconstruction with an M-net.

    Architecture (spec 2.1):
        base_channels: A2: width ``C`` of the M-net (channel plan C, 2C, 4C, 8C); 64.
        depth: A1: number of M-net levels = SKFF streams; 4.
        use_residual_attention: A3: residual attention modules (False: the Table 5 ablation,
            1x1 convs); True.
        ram_reduction: A3: channel-attention reduction inside RAM; 8.
        ram_activation: A8: activation inside RAM, ``"relu"`` or ``"prelu"``; ``"relu"``.
        skff_reduction: A6: SKFF squeeze reduction; 8.
        share_input_stem: A4: one 3x3 stem shared by all input-pyramid levels; True.
        skip_conv: A5: skip connections through a 3x3 conv; True.
        side_upsample_first: A6: side outputs upsampled before their conv (False: conv first).
        global_residual: A7: add the noisy input to the output; True.
        init_scheme: A8: weight initialisation; only ``"default"`` (PyTorch defaults).
        input_unshuffle: Speed option, not in the paper: 1 (the paper) runs the M-net at the input
            resolution; 2 folds 2x2 pixel blocks into channels first (PixelUnshuffle, as FFDNet),
            runs the M-net at half resolution and unfolds its output (PixelShuffle): about 4x less
            network work, reconstruction and map still at full resolution; 1.

    Noise (Eq. 1, spec 2.2):
        noise_lambda: blend weight lambda; paper 0.3 (Table 4).
        noise_mean: A9: mean of eps ~ N(0.5, 0.5); 0.5.
        noise_std: A9: standard deviation of eps (read as std, not variance); 0.5.
        noise_space: A9: ``"normalized"`` (literal Eq. 1 on normalised images) or ``"pixel"``.
        noise_at_test: A10: blend noise at test time too; True.
        eval_noise: A10: ``"fixed"`` (seeded buffer, deterministic and exportable) or
            ``"random"`` (fresh draws; not exportable).
        eval_noise_seed: A10: seed of the fixed eval noise; 0.
        eval_noise_samples: A29: number of fixed noise draws averaged at test; 1.
        train_noise_seed: seed of the training noise generator, offset by the global rank so DDP
            processes draw different noise (not in the paper); 0.

    Pre-processing (spec 2.4):
        image_size: input size ``(H, W)``; paper 256x256. Also fixes the eval-noise buffer.
        norm_mean: per-channel normalisation mean; 0.5 (Sec. 3.1).
        norm_std: per-channel normalisation std; 0.5 (Sec. 3.1).

    Metric and loss (Eq. 2-9, spec 2.3):
        msssim_sigmas: A13: Gaussian sigmas (0.5, 1, 2, 4, 8) (Zhao et al.).
        msssim_mode: A28: ``"sigma"`` (full-resolution sigma bank); ``"pyramid"`` is not
            implemented.
        ssim_kernel_size: A14: window size; 33.
        ssim_padding: A14: ``"zeros"`` or ``"reflect"``; ``"zeros"``.
        ssim_k1: A12: K1; 0.01.
        ssim_k2: A12: K2; 0.03.
        ssim_constants_squared: A12: ``C = (K L) ** 2``; True.
        ssim_data_range: A11/A12: data range L; 1.0.
        loss_alpha: A15: MS-SSIM weight alpha; 0.84.
        metric_space: A11: ``"unit"`` (map to [0, 1]) or ``"normalized"``; ``"unit"``.
        channel_reduction: A16: ``"mean"`` or ``"max"`` over RGB; ``"mean"``.
        loss_reduction: A17: ``"mean"`` or ``"sum"`` of the per-pixel loss map; ``"mean"``.
        anomaly_map_blur_sigma: A18: extra smoothing of the anomaly map, 0 = off; 0.0.
        score_mode: A19: image score from the map, ``"max"``, ``"mean"`` or ``"topk_mean"``.
        score_topk_ratio: A19: fraction of pixels for ``"topk_mean"``; 0.01.

    Optimisation (Sec. 4.2, spec 2.4):
        lr: A20: initial learning rate 1e-4 (the paper's 1e-6 equals eta_min; typo).
        betas: AdamW betas; paper (0.5, 0.999).
        weight_decay: A21: AdamW weight decay; 0.01.
        t_max: A22: cosine annealing period (epochs); paper 100.
        eta_min: A22: cosine annealing minimum lr; paper 1e-6.
        early_stopping_monitor: A24: ``"val_loss"`` or ``"train_loss_epoch"``.
        early_stopping_patience: A24: epochs without improvement; paper 20. 0 disables.
        restore_best_weights: A24: reload the best ``val_loss`` weights at the end of fit.

    Components:
        pre_processor: anomalib pre-processor, or True for Resize(image_size) + Normalize(0.5, 0.5).
        post_processor: anomalib post-processor or flag.
        evaluator: anomalib evaluator or flag.
        visualizer: anomalib visualizer or flag.
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
        init_scheme: str = "default",
        input_unshuffle: int = 1,
        noise_lambda: float = 0.3,
        noise_mean: float = 0.5,
        noise_std: float = 0.5,
        noise_space: str = "normalized",
        noise_at_test: bool = True,
        eval_noise: str = "fixed",
        eval_noise_seed: int = 0,
        eval_noise_samples: int = 1,
        train_noise_seed: int = 0,
        norm_mean: float = 0.5,
        norm_std: float = 0.5,
        msssim_sigmas: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
        msssim_mode: str = "sigma",
        ssim_kernel_size: int = 33,
        ssim_padding: str = "zeros",
        ssim_k1: float = 0.01,
        ssim_k2: float = 0.03,
        ssim_constants_squared: bool = True,
        ssim_data_range: float = 1.0,
        loss_alpha: float = 0.84,
        metric_space: str = "unit",
        channel_reduction: str = "mean",
        loss_reduction: str = "mean",
        anomaly_map_blur_sigma: float = 0.0,
        score_mode: str = "max",
        score_topk_ratio: float = 0.01,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.999),
        weight_decay: float = 0.01,
        t_max: int = 100,
        eta_min: float = 1e-6,
        early_stopping_monitor: str = "val_loss",
        early_stopping_patience: int = 20,
        restore_best_weights: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if msssim_mode != "sigma":
            msg = f"msssim_mode={msssim_mode!r} is not implemented: only 'sigma' (A28, the paper's reading)."
            raise NotImplementedError(msg)
        if init_scheme != "default":
            msg = f"init_scheme={init_scheme!r} is invalid: only 'default' (PyTorch defaults, A8) is available."
            raise ValueError(msg)
        if early_stopping_monitor not in {"val_loss", "train_loss_epoch"}:
            msg = f"early_stopping_monitor={early_stopping_monitor!r} is invalid: use 'val_loss' or 'train_loss_epoch'."
            raise ValueError(msg)
        image_size = tuple(int(v) for v in image_size)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size, norm_mean=norm_mean, norm_std=norm_std)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        metric_kwargs = {
            "ssim_k1": ssim_k1,
            "ssim_k2": ssim_k2,
            "ssim_constants_squared": ssim_constants_squared,
            "ssim_data_range": ssim_data_range,
            "ssim_kernel_size": ssim_kernel_size,
            "ssim_padding": ssim_padding,
            "msssim_sigmas": tuple(msssim_sigmas),
            "loss_alpha": loss_alpha,
            "metric_space": metric_space,
            "channel_reduction": channel_reduction,
        }
        self.model = N2NModel(
            image_size=image_size,
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
            noise_lambda=noise_lambda,
            noise_mean=noise_mean,
            noise_std=noise_std,
            noise_space=noise_space,
            noise_at_test=noise_at_test,
            eval_noise=eval_noise,
            eval_noise_seed=eval_noise_seed,
            eval_noise_samples=eval_noise_samples,
            norm_mean=norm_mean,
            norm_std=norm_std,
            anomaly_map_blur_sigma=anomaly_map_blur_sigma,
            score_mode=score_mode,
            score_topk_ratio=score_topk_ratio,
            **metric_kwargs,
        )
        self.loss = N2NLoss(
            sigmas=tuple(msssim_sigmas),
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
            reduction=loss_reduction,
        )
        self.lr = lr
        self.betas = tuple(betas)
        self.weight_decay = weight_decay
        self.t_max = t_max
        self.eta_min = eta_min
        self.train_noise_seed = train_noise_seed
        self.early_stopping_monitor = early_stopping_monitor
        self.early_stopping_patience = early_stopping_patience
        self.restore_best_weights = restore_best_weights
        self._noise_generator: torch.Generator | None = None

    def configure_post_processor(self) -> PostProcessor:
        """The post-processor of anomalib with an order-preserving normalisation (no clamp, no ties).

        With a normal-only validation split (``val_split_mode: from_train``, the paper's protocol)
        anomalib's default clamps every score above the normal range to 1, so defect pixels tie
        and pixel AUROC / AUPRO collapse; :class:`OrderPreservingPostProcessor` keeps their order.
        """
        return OrderPreservingPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default metrics plus the papers' PRO (``AUPRO(fpr_limit=0.3)``)."""
        return pro_evaluator(fpr_limit=0.3)

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        norm_mean: float = 0.5,
        norm_std: float = 0.5,
    ) -> PreProcessor:
        """Resize (antialiased) and normalise with mean = std = 0.5 per channel (Sec. 3.1), no ImageNet stats.

        Args:
            image_size: Target ``(H, W)``; default (256, 256) (Sec. 4.2).
            norm_mean: Per-channel mean; 0.5.
            norm_std: Per-channel std; 0.5.

        Returns:
            The pre-processor.
        """
        image_size = tuple(image_size) if image_size else (256, 256)
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    Normalize(mean=[norm_mean] * 3, std=[norm_std] * 3),
                ]
            ),
        )

    def setup(self, stage: str) -> None:
        """Before fitting: refuse to select the epoch on test images (A24, spec T12)."""
        if stage == "fit":
            self._check_selection_is_not_on_test_images()

    def _selects_on_validation(self) -> bool:
        selects = self.early_stopping_patience > 0 or self.restore_best_weights
        return selects and self.early_stopping_monitor == "val_loss"

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
        """Seed the training-noise generator per rank (distinct noise on every DDP process)."""
        # On the CPU: the same seed gives the same noise whatever device trains.
        self._noise_generator = rank_generator(self.train_noise_seed, self.global_rank)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Blend fresh noise, reconstruct, and minimise Eq. (9) against the clean image."""
        del args, kwargs
        reconstruction, clean = self.model(batch.image, generator=self._noise_generator)
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
                "N2N: restored the weights with %s = %.6f.", self.early_stopping_monitor, checkpoint.best_model_score
            )

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (betas (0.5, 0.999)) with cosine annealing stepped once per epoch (Sec. 4.2)."""
        optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.t_max, eta_min=self.eta_min)
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
                    monitor=self.early_stopping_monitor,
                    mode="min",
                    auto_insert_metric_name=False,
                ),
            )
        if self.early_stopping_patience > 0:
            callbacks.append(
                EarlyStopping(
                    monitor=self.early_stopping_monitor,
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

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (none in the paper) and no sanity validation (as DRAEM)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """N2N trains on normal images only."""
        return LearningType.ONE_CLASS
