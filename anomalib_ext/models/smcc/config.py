"""SMCC's ablation groups: every spec assumption and paper ablation, each default written once.

The Lightning module exposes the knobs a user tunes as flat arguments; the rest lives in these small
frozen dataclasses, which jsonargparse reads from YAML and the command line
(``--model.clustering.center_source coreset``). ``A<n>`` cites the assumption of the spec
(``shared/methods/smcc.md`` section 5). A choice is a ``Literal``: the CLI rejects a typo at parse time
and lists the accepted values; built in Python, the group checks its choices when it is created.

Example:
    >>> from anomalib_ext.models.smcc.config import ClusteringConfig, FeatureConfig
    >>> FeatureConfig(fusion_layer_index=1).fusion_layer_index
    1
    >>> ClusteringConfig(center_source="means")
    Traceback (most recent call last):
    ...
    ValueError: ClusteringConfig.center_source='means' is invalid: expected one of ('gmm_means', 'coreset').
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from typing import Literal, get_args, get_origin

#: Interpolation modes of ``torch.nn.functional.interpolate`` for 2-D maps.
InterpolationMode = Literal["bilinear", "bicubic", "nearest", "nearest-exact", "area"]


def _check_choices(config: object) -> None:
    """Raise ``ValueError`` when a ``Literal`` field holds a value outside its choices."""
    hints = typing.get_type_hints(type(config), globalns=globals())
    for item in fields(config):  # type: ignore[arg-type]
        hint = hints[item.name]
        options = get_args(hint) if get_origin(hint) is Literal else None
        if options is None and get_origin(hint) in {typing.Union, types.UnionType}:
            literals = [arg for arg in get_args(hint) if get_origin(arg) is Literal]
            if literals:
                options = tuple(value for arg in literals for value in get_args(arg))
                options += (None,) if type(None) in get_args(hint) else ()
        value = getattr(config, item.name)
        if options is not None and value not in options:
            msg = f"{type(config).__name__}.{item.name}={value!r} is invalid: expected one of {options}."
            raise ValueError(msg)


@dataclass(frozen=True)
class FeatureConfig:
    """The adapted backbone and its fused patch features (Sec. III-A, Algorithm 1).

    Args:
        fusion_layer_index: A3: tapped layer whose resolution the fusion keeps (0 = the finest);
            A24: 1 (stride 8) in the offline CPU variant.
        fusion_upsample_mode: A3: interpolation of the coarser maps in the fusion.
        aggregation_kernel: A4: anomalib PatchCore's neighbourhood mean of every tapped map before the
            fusion resizes it; 1 = none (odd).
        projection_dim: A4: channels of an optional learned 1x1 projection after the fusion; ``None`` = none.
        trainable_scope: A13: ``"all"`` or backbone module-name prefixes whose parameters train.
        freeze_bn_stats: A13: keep the backbone's BatchNorm running statistics frozen.
        train_bn_affine: A13: let the BatchNorm affine parameters train.
    """

    fusion_layer_index: int = 0
    fusion_upsample_mode: InterpolationMode = "bilinear"
    aggregation_kernel: int = 1
    projection_dim: int | None = None
    trainable_scope: str | tuple[str, ...] = "all"
    freeze_bn_stats: bool = True
    train_bn_affine: bool = True

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass(frozen=True)
class ClusteringConfig:
    """Stage 0: the centre set (Sec. III-B, Algorithm 2): k-means++ seeds, sensitivity coreset, weighted GMM.

    Args:
        sampling_rate: Coreset size as a fraction of the pooled patches (Table II: 0.1; A9).
        center_source: A5: the GMM means (``"gmm_means"``) or the unique coreset points (``"coreset"``).
        bicriteria_size: A7: number of k-means++ seeds; ``None`` = ``n_components``.
        coreset_alpha: A8: sensitivity alpha; ``None`` = 16 (ln k + 2).
        sensitivity_uniform_coef: A8: coefficient of the third sensitivity term (2 as printed).
        coreset_replacement: A9: draw the coreset with replacement.
        gmm_max_iter: A10: EM iterations of the diagonal GMM.
        gmm_tol: A10: EM tolerance on the weighted mean log-likelihood.
        gmm_reg_covar: A10: added to the GMM variances.
        max_cluster_patches: A6: uniform seeded subsample of the clustering pool; ``None`` = all patches.
        recluster_every_n_epochs: A6: re-run the clustering every n epochs; 0 = never (not in the paper).
        seed: A23: seed of the clustering generator, independent of Lightning's seed.
    """

    sampling_rate: float = 0.1
    center_source: Literal["gmm_means", "coreset"] = "gmm_means"
    bicriteria_size: int | None = None
    coreset_alpha: float | None = None
    sensitivity_uniform_coef: float = 2.0
    coreset_replacement: bool = True
    gmm_max_iter: int = 100
    gmm_tol: float = 1e-3
    gmm_reg_covar: float = 1e-6
    max_cluster_patches: int | None = None
    recluster_every_n_epochs: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choices(self)
        if not 0 < self.sampling_rate <= 1:
            msg = f"sampling_rate={self.sampling_rate} is invalid: expected a fraction of the pooled patches in (0, 1]."
            raise ValueError(msg)
        if self.recluster_every_n_epochs < 0:
            msg = f"recluster_every_n_epochs={self.recluster_every_n_epochs} is invalid: expected >= 0 (0 = never)."
            raise ValueError(msg)


@dataclass(frozen=True)
class TrainingConfig:
    """Stage 1: the loss ``lambda_c L_c + lambda_o L_o`` (Eqs. 4-6) and the optimiser (Table II).

    Args:
        lambda_c: Weight of the centre loss L_c (Eq. 6: 1).
        lambda_o: Weight of the margin loss L_o (Eq. 6: 1).
        loss_distance: A11: ``"euclidean"`` or ``"squared_euclidean"`` distance to the centres.
        loss_reduction: A12: ``"mean"`` or ``"sum"`` over the patches of a batch.
        distance_eps: A11: clamp before the square root.
        optimizer: A14: ``"adam"`` (coupled L2 weight decay, as the paper's "Adam + weight decay") or ``"adamw"``.
        weight_decay: Weight decay (Table II: 5e-4).
        lr_scheduler: A14: ``None`` (constant learning rate) or ``"cosine"`` over ``max_epochs``.
    """

    lambda_c: float = 1.0
    lambda_o: float = 1.0
    loss_distance: Literal["euclidean", "squared_euclidean"] = "euclidean"
    loss_reduction: Literal["mean", "sum"] = "mean"
    distance_eps: float = 1e-12
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 5e-4
    lr_scheduler: Literal["cosine"] | None = None

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass(frozen=True)
class ScoringConfig:
    """The memory bank's refresh and the score (Sec. III-D, Eqs. 7-8): k-NN distance, upsampling, smoothing.

    Args:
        num_neighbors: A19: K of the k-NN score, Eq. (8).
        sigma: A20: Gaussian smoothing of the anomaly map, in pixels (kernel ``2 int(4 sigma + 0.5) + 1``).
        upsample_mode: Interpolation of the patch map to the input size (Sec. III-D: bilinear).
        image_score: A21: max of the smoothed map (``"max"``), max of the patch scores (``"max_patch"``) or
            the mean of the ``image_score_topk`` highest map values (``"topk_mean"``).
        image_score_topk: A21: values averaged by ``"topk_mean"``.
        refresh_bank: A18: re-embed the bank images with the final weights before evaluation.
        knn_chunk_size: Memory-bank rows per k-NN chunk (bounds memory; no effect on the results).
        coreset_ratio: Not in the paper: keep a k-centre greedy coreset of this fraction of the refreshed
            bank's patches (anomalib PatchCore's selection); ``None`` = the whole bank (paper). Needs
            ``refresh_bank``.
    """

    num_neighbors: int = 3
    sigma: float = 4.0
    upsample_mode: InterpolationMode = "bilinear"
    image_score: Literal["max", "max_patch", "topk_mean"] = "max"
    image_score_topk: int = 10
    refresh_bank: bool = True
    knn_chunk_size: int = 16384
    coreset_ratio: float | None = None

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.num_neighbors < 1 or self.knn_chunk_size < 1:
            msg = f"num_neighbors and knn_chunk_size must be >= 1, got {self.num_neighbors}, {self.knn_chunk_size}"
            raise ValueError(msg)
        if self.coreset_ratio is not None and not 0 < self.coreset_ratio <= 1:
            msg = f"coreset_ratio={self.coreset_ratio} is invalid: expected a fraction of the bank in (0, 1] or None."
            raise ValueError(msg)
        if self.coreset_ratio is not None and not self.refresh_bank:
            msg = "coreset_ratio is applied when the bank is refreshed: it needs refresh_bank=True."
            raise ValueError(msg)
