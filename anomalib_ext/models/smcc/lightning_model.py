"""SMCC: Self-updated Memory and Center Clustering.

"Unsupervised Image Anomaly Detection and Localization in Industry Based on Self-Updated Memory and
Center Clustering" (Liu, Gao, Wen, Luo; IEEE Transactions on Instrumentation and Measurement, 2023).

Multi-layer patch features of an ImageNet-pretrained CNN are clustered once (k-means++ seeding,
sensitivity-sampled coreset, weighted GMM) into a few centres. The backbone is then fine-tuned so
that each normal patch moves towards its nearest centre (L_c) and away from its second-nearest
(L_o). The memory bank holds the patches of one training batch only, refreshed during training, so
its size does not depend on the training set. A test patch scores the mean distance to its K
nearest memory patches; the map is upsampled bilinearly and Gaussian-smoothed.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import SMCC
    >>> model = SMCC(backbone="efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    ...              fusion_layer_index=1, image_size=(256, 256))
    >>> engine = Engine(max_epochs=30)
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=16))  # doctest: +SKIP

Paper: https://doi.org/10.1109/TIM.2023.3273677 (local copy: ``shared/papers/smcc.md``).

See Also:
    :class:`anomalib_ext.models.smcc.torch_model.SmccModel`,
    :class:`anomalib_ext.models.smcc.loss.SmccLoss`,
    :mod:`anomalib_ext.models.smcc.centres`
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUROC, Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

from anomalib_ext.models.defaults import pro_evaluator

from .centres import build_centre_set
from .loss import SmccLoss
from .torch_model import SmccModel

logger = logging.getLogger(__name__)

__all__ = ["SMCC"]


class SMCC(AnomalibModule):
    """SMCC Lightning module.

    Args:
        backbone: timm backbone name, resolved offline (A1: ``wide_resnet50_2.tv_in1k``).
        layers: Tapped layers (A2: layer1..layer4).
        pre_trained: Load ImageNet weights (tests use False).
        weights_path: Optional local backbone weights file.
        image_size: Resize size of the default pre-processor (Sec. IV-A: 224x224; A22).
        center_crop_size: Optional centre crop after the resize (A22: None).
        fusion_layer_index: Tapped layer whose resolution the fusion keeps (A3: 0; A24: 1 offline).
        fusion_upsample_mode: Interpolation of coarser maps in the fusion (A3: bilinear).
        aggregation_kernel: Neighbourhood mean after fusion, 1 = none (A4).
        projection_dim: Optional learned 1x1 projection after fusion, None = none (A4).
        n_components: Number of GMM clusters k (Sec. IV-D: 10).
        sampling_rate: Coreset size as a fraction of the pooled patches (Table II: 0.1; A9).
        center_source: ``"gmm_means"`` or ``"coreset"`` (A5).
        bicriteria_size: Number of k-means++ seeds, None = n_components (A7).
        coreset_alpha: Sensitivity alpha, None = 16 (ln k + 2) (A8).
        sensitivity_uniform_coef: Coefficient of the third sensitivity term (A8: 2 as printed).
        coreset_replacement: Draw the coreset with replacement (A9).
        gmm_covariance_type: Only ``"diag"`` is supported (A10).
        gmm_max_iter: EM iterations (A10: 100).
        gmm_tol: EM tolerance on the weighted mean log-likelihood (A10: 1e-3).
        gmm_reg_covar: Added to GMM variances (A10: 1e-6).
        max_cluster_patches: Uniform seeded subsample of the clustering pool, None = all (A6).
        recluster_every_n_epochs: Re-run the clustering every n epochs, 0 = never (A6; not in the paper).
        cluster_seed: Seed of the clustering generator (A23: 0).
        memory_bank_images: Images whose patches form the bank (Sec. IV-C: 16; A17).
        refresh_memory_bank: Re-embed the bank images with the final weights before evaluation (A18).
        lambda_c: Weight of the centre loss L_c (Eq. 6: 1).
        lambda_o: Weight of the margin loss L_o (Eq. 6: 1).
        loss_distance: ``"euclidean"`` or ``"squared_euclidean"`` (A11).
        loss_reduction: ``"mean"`` or ``"sum"`` over the patches of a batch (A12).
        distance_eps: Clamp before the square root in the loss (A11: 1e-12).
        trainable_scope: ``"all"`` or backbone module-name prefixes that train (A13).
        freeze_bn_stats: Keep BatchNorm running statistics frozen (A13).
        train_bn_affine: Train BatchNorm affine parameters (A13).
        optimizer: ``"adam"`` (coupled L2) or ``"adamw"`` (A14).
        lr: Learning rate (Table II: 0.001).
        weight_decay: Weight decay (Table II: 0.0005).
        lr_scheduler: None (constant, A14) or ``"cosine"``.
        num_neighbors: K of the k-NN score, Eq. (8) (A19: 3).
        upsample_mode: Interpolation of the patch map to the input size (Sec. III-D: bilinear).
        sigma: Gaussian smoothing sigma (A20: 4).
        image_score: ``"max"``, ``"max_patch"`` or ``"topk_mean"`` (A21).
        image_score_topk: Values averaged by ``"topk_mean"`` (A21: 10).
        knn_chunk_size: Memory-bank rows per k-NN chunk (memory bound; no effect on results).
        pre_processor: Pre-processor, or True for :meth:`configure_pre_processor`.
        post_processor: Post-processor, or True for the default.
        evaluator: Evaluator, or True for the default (image/pixel AUROC, F1, AUPRO at FPR 0.3).
        visualizer: Visualizer, or True for the default.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        pre_trained: bool = True,
        weights_path: str | None = None,
        image_size: tuple[int, int] | None = None,
        center_crop_size: tuple[int, int] | None = None,
        fusion_layer_index: int = 0,
        fusion_upsample_mode: str = "bilinear",
        aggregation_kernel: int = 1,
        projection_dim: int | None = None,
        n_components: int = 10,
        sampling_rate: float = 0.1,
        center_source: str = "gmm_means",
        bicriteria_size: int | None = None,
        coreset_alpha: float | None = None,
        sensitivity_uniform_coef: float = 2.0,
        coreset_replacement: bool = True,
        gmm_covariance_type: str = "diag",
        gmm_max_iter: int = 100,
        gmm_tol: float = 1e-3,
        gmm_reg_covar: float = 1e-6,
        max_cluster_patches: int | None = None,
        recluster_every_n_epochs: int = 0,
        cluster_seed: int = 0,
        memory_bank_images: int = 16,
        refresh_memory_bank: bool = True,
        lambda_c: float = 1.0,
        lambda_o: float = 1.0,
        loss_distance: str = "euclidean",
        loss_reduction: str = "mean",
        distance_eps: float = 1e-12,
        trainable_scope: str | Sequence[str] = "all",
        freeze_bn_stats: bool = True,
        train_bn_affine: bool = True,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        lr_scheduler: str | None = None,
        num_neighbors: int = 3,
        upsample_mode: str = "bilinear",
        sigma: float = 4.0,
        image_score: str = "max",
        image_score_topk: int = 10,
        knn_chunk_size: int = 16384,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size, center_crop_size)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self._validate(center_source, gmm_covariance_type, optimizer, lr_scheduler, n_components, lambda_o)
        self._validate_sizes(memory_bank_images, sampling_rate, recluster_every_n_epochs)
        self.model = SmccModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            weights_path=weights_path,
            fusion_layer_index=fusion_layer_index,
            fusion_upsample_mode=fusion_upsample_mode,
            aggregation_kernel=aggregation_kernel,
            projection_dim=projection_dim,
            num_neighbors=num_neighbors,
            sigma=sigma,
            upsample_mode=upsample_mode,
            image_score=image_score,
            image_score_topk=image_score_topk,
            knn_chunk_size=knn_chunk_size,
            freeze_bn_stats=freeze_bn_stats,
            train_bn_affine=train_bn_affine,
            trainable_scope=trainable_scope,
        )
        self.loss = SmccLoss(
            lambda_c=lambda_c, lambda_o=lambda_o, distance=loss_distance, reduction=loss_reduction, eps=distance_eps
        )
        self.centre_config = {
            "n_components": n_components,
            "sampling_rate": sampling_rate,
            "center_source": center_source,
            "bicriteria_size": bicriteria_size,
            "coreset_alpha": coreset_alpha,
            "sensitivity_uniform_coef": sensitivity_uniform_coef,
            "coreset_replacement": coreset_replacement,
            "gmm_max_iter": gmm_max_iter,
            "gmm_tol": gmm_tol,
            "gmm_reg_covar": gmm_reg_covar,
        }
        self.max_cluster_patches = max_cluster_patches
        self.recluster_every_n_epochs = recluster_every_n_epochs
        self.cluster_seed = cluster_seed
        self.memory_bank_images = memory_bank_images
        self.refresh_memory_bank = refresh_memory_bank
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_scheduler = lr_scheduler

    @staticmethod
    def _validate(
        center_source: str,
        gmm_covariance_type: str,
        optimizer: str,
        lr_scheduler: str | None,
        n_components: int,
        lambda_o: float,
    ) -> None:
        choices = {
            "center_source": (center_source, ("gmm_means", "coreset")),
            "gmm_covariance_type": (gmm_covariance_type, ("diag",)),
            "optimizer": (optimizer, ("adam", "adamw")),
            "lr_scheduler": (lr_scheduler, (None, "cosine")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                msg = f"{key} must be one of {allowed}, got {value!r}"
                raise ValueError(msg)
        if n_components < 2 and lambda_o > 0:
            msg = f"n_components must be >= 2 when lambda_o > 0 (L_o needs a second-nearest centre), got {n_components}"
            raise ValueError(msg)

    @staticmethod
    def _validate_sizes(memory_bank_images: int, sampling_rate: float, recluster_every_n_epochs: int) -> None:
        if memory_bank_images < 1:
            msg = f"memory_bank_images must be >= 1, got {memory_bank_images}"
            raise ValueError(msg)
        if not 0 < sampling_rate <= 1:
            msg = f"sampling_rate must be in (0, 1], got {sampling_rate}"
            raise ValueError(msg)
        if recluster_every_n_epochs < 0:
            msg = f"recluster_every_n_epochs must be >= 0, got {recluster_every_n_epochs}"
            raise ValueError(msg)

    # ------------------------------------------------------------------ anomalib hooks
    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        center_crop_size: tuple[int, int] | None = None,
    ) -> PreProcessor:
        """Resize (default 224x224, Sec. IV-A), optional centre crop, ImageNet normalisation (A22)."""
        image_size = tuple(image_size) if image_size else (224, 224)
        crop = [CenterCrop(tuple(center_crop_size))] if center_crop_size else []
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    *crop,
                    Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ]
            ),
        )

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image/pixel AUROC and F1 plus the papers' PRO (``AUPRO(fpr_limit=0.3)``); image AUROC on validation."""
        return pro_evaluator(fpr_limit=0.3, val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])

    def configure_post_processor(self) -> PostProcessor:
        """The default one-class post-processor of anomalib."""
        return PostProcessor()

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping; no sanity validation before the bank exists (T13). Nothing else (T20)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    def configure_optimizers(self) -> Any:
        """Adam with coupled L2 weight decay on every trainable parameter (Table II, A14)."""
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        optimizer_class = torch.optim.Adam if self.optimizer_name == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(parameters, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_scheduler == "cosine":
            epochs = max(1, self.trainer.max_epochs or 1)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return optimizer

    # ------------------------------------------------------------------ stage 0: clustering
    @property
    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def _bank_images_per_rank(self) -> int:
        """A17: each rank keeps ceil(memory_bank_images / world_size) images of its latest full batch."""
        return math.ceil(self.memory_bank_images / self._world_size)

    def _clustering_batches(self) -> Any:
        """The whole training set in a fixed order, un-sharded (T18), as the trainer's loader would batch it."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_data", None)
        if dataset is not None:
            return DataLoader(
                dataset,
                batch_size=datamodule.train_batch_size,
                shuffle=False,
                num_workers=datamodule.num_workers,
                collate_fn=datamodule.external_collate_fn or dataset.collate_fn,
            )
        if self._world_size > 1:
            logger.warning("SMCC clusters on rank 0's shard only: pass a datamodule for the whole training set.")
        return self.trainer.train_dataloader

    @torch.no_grad()
    def _cluster(self, n_bank_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool all training patches (un-adapted or current backbone, eval mode) and build the centres (Alg. 2)."""
        was_training = self.model.training
        self.model.eval()
        pool, bank_images, n_seen = [], [], 0
        for batch in self._clustering_batches():
            images = batch.image.to(self.device)
            if self.pre_processor is not None:  # the loader yields un-normalised images (T4)
                images = self.pre_processor.transform(images)
            if n_seen < n_bank_images:
                bank_images.append(images[: n_bank_images - n_seen].cpu())
                n_seen += bank_images[-1].shape[0]
            pool.append(self.model.to_patches(self.model.embed(images)).float().cpu())
        self.model.train(was_training)
        if n_seen < n_bank_images:
            msg = (
                f"SMCC needs at least memory_bank_images={self.memory_bank_images} training images "
                f"for the clustering pass and the initial bank, got {n_seen}"
            )
            raise ValueError(msg)
        patches = torch.cat(pool)
        generator = torch.Generator().manual_seed(self.cluster_seed)
        if self.max_cluster_patches is not None and patches.shape[0] > self.max_cluster_patches:
            patches = patches[torch.randperm(patches.shape[0], generator=generator)[: self.max_cluster_patches]]
        centres = build_centre_set(patches, generator=generator, **self.centre_config)
        return centres, torch.cat(bank_images)

    def _fit_centres(self, initialise_bank: bool = True) -> None:
        """Stage 0 on rank 0, broadcast to all ranks (T18); optionally initialise the bank (A17)."""
        rank = self.trainer.global_rank
        result = self._cluster(self.memory_bank_images) if rank == 0 else None
        if self._world_size > 1:
            result = self.trainer.strategy.broadcast(result, src=0)
            self.trainer.strategy.barrier("smcc_centres")
        centres, bank_images = result
        self.model.centres = centres.to(self.device)
        self.model.centres_fitted = torch.tensor(True, device=self.device)
        if initialise_bank:  # A17: the first memory_bank_images images of the clustering pass, same on all ranks
            self.model.refresh_memory(bank_images[: self.memory_bank_images].to(self.device))

    def on_train_start(self) -> None:
        """Check sizes, freeze BatchNorm (T2) and run stage 0 unless the centres come from a checkpoint (T14)."""
        if self._world_size > 1 and not self.refresh_memory_bank:
            msg = "refresh_memory_bank=False is not supported under DDP: the bank is rebuilt from all ranks (T18)"
            raise ValueError(msg)
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "train_batch_size", None)
        if batch_size is not None and batch_size < self._bank_images_per_rank:
            msg = (
                f"train_batch_size={batch_size} per process is smaller than memory_bank_images="
                f"{self.memory_bank_images} / world size {self._world_size}: the bank would never be updated (T11)"
            )
            raise ValueError(msg)
        self.model.freeze_batchnorm()
        if not bool(self.model.centres_fitted):
            self._fit_centres()

    def on_train_epoch_start(self) -> None:
        """Re-apply the BatchNorm freeze (Lightning restores modes after validation, T2); optional re-clustering."""
        self.model.freeze_batchnorm()
        n = self.recluster_every_n_epochs
        if n > 0 and self.current_epoch > 0 and self.current_epoch % n == 0:
            self._fit_centres(initialise_bank=False)

    # ------------------------------------------------------------------ stage 1: self-update
    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """L_SMCC against the fixed centres; the bank takes this batch's patches if it is full (A17, T11)."""
        del args, kwargs
        features = self.model(batch.image)
        patches = self.model.to_patches(features)
        loss, parts = self.loss(patches, self.model.centres)
        self.model.update_memory(patches, batch.image, self._bank_images_per_rank)
        self.model.bank_stale = True  # the weights change with this step (A18)
        n_images = batch.image.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n_images)
        parts = {f"train_{name}": value for name, value in parts.items()}
        self.log_dict(parts, on_step=False, on_epoch=True, batch_size=n_images)
        return {"loss": loss}

    # ------------------------------------------------------------------ stage 2: refresh before evaluation
    def _refresh_bank(self) -> None:
        """Re-embed the rank-ordered union of all ranks' bank images with the current weights (A18, T18)."""
        if not (self.refresh_memory_bank and self.model.bank_stale):
            return
        local_images = self.model.bank_images
        if local_images.numel() == 0:  # resumed from a checkpoint: its bank is already refreshed (T10)
            self.model.bank_stale = False
            return
        images = local_images
        if self._world_size > 1:  # same batch sizes on all ranks (DistributedSampler), so same shapes here
            images = self.all_gather(local_images).reshape(-1, *local_images.shape[1:])
        # afterwards every rank holds the same images and the same bank
        self.model.refresh_memory(images[: self.memory_bank_images])

    def on_validation_start(self) -> None:
        """Refresh the bank before validation, hence before the checkpoint saved after it (T12)."""
        self._refresh_bank()

    def on_train_epoch_end(self) -> None:
        """Refresh the bank if no validation ran; log the collapse diagnostic (T15)."""
        self._refresh_bank()
        bank = self.model.memory_bank
        if bank.shape[0] > 1:
            self.log("train_bank_channel_std", bank.std(dim=0).mean(), on_epoch=True)

    def on_test_start(self) -> None:
        """Refresh a stale bank before testing."""
        self._refresh_bank()

    def on_predict_start(self) -> None:
        """Refresh a stale bank before predicting."""
        self._refresh_bank()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Score the batch with the memory bank."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
