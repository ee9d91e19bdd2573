"""Centre-set construction of SMCC (Sec. III-B, Algorithm 2, after Lucic et al.).

k-means++ seeding gives a rough bicriteria solution B, sensitivity sampling draws a weighted coreset
from the pooled patch features, and a weighted Gaussian mixture with diagonal covariances fitted
on the coreset (Eq. 3) gives the centres. anomalib's ``GaussianMixture`` and ``KMeans`` cannot be
reused here: the former is full-covariance and unweighted, the latter uses random init and no
weights (spec trap T5); PatchCore's ``KCenterGreedy`` is not a sensitivity sampler (T6).

Everything here runs once, without gradients, on CPU-friendly chunks.

See Also:
    :class:`anomalib_ext.models.smcc.lightning_model.SMCC`
"""

from __future__ import annotations

import math

import torch
from anomalib.models.components.base import DynamicBufferMixin
from torch import nn

from .config import ClusteringConfig

MULTINOMIAL_LIMIT = 2**24


def squared_distances(points: torch.Tensor, others: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """Squared Euclidean distances ``(N, M)`` between rows of ``points`` and ``others``, clamped at 0."""
    other_norms = others.pow(2).sum(1)
    rows = []
    for start in range(0, points.shape[0], chunk_size):
        chunk = points[start : start + chunk_size]
        rows.append((chunk.pow(2).sum(1, keepdim=True) + other_norms[None] - 2.0 * chunk @ others.T).clamp_min(0))
    return torch.cat(rows) if rows else points.new_zeros(0, others.shape[0])


def _safe_probabilities(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` normalised to sum 1, or uniform when they sum to zero (spec trap T17)."""
    total = weights.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(weights, 1.0 / weights.numel())
    return weights / total


@torch.no_grad()
def greedy_coreset(points: torch.Tensor, size: int) -> torch.Tensor:
    """Indices ``(size,)`` of a k-centre greedy coreset of ``points`` ``(N, C)``: PatchCore's bank selection.

    Every step adds the point farthest from those already chosen, starting from the point farthest
    from the mean. The same selection as anomalib's ``KCenterGreedy``, written here because that class
    starts from a point drawn from the global torch RNG and draws its sparse random projection from
    NumPy's global RNG, so DDP ranks refreshing the same bank would keep different coresets; this one
    has no randomness and uses exact distances (anomalib's projection for ``eps=0.9`` is wider than
    SMCC's 152 fused channels: 274 for a 64-image bank).
    """
    if not 1 <= size <= points.shape[0]:
        msg = f"coreset size must be in [1, {points.shape[0]}] (the number of points), got {size}"
        raise ValueError(msg)
    points = points.float()
    norms = points.pow(2).sum(1)
    current = (points - points.mean(0)).pow(2).sum(1).argmax()
    selected = [current]
    nearest = torch.full_like(norms, float("inf"))
    # the norms once, not per step: squared_distances() would recompute them over the whole bank each time
    for _ in range(size - 1):
        distances = norms - 2.0 * (points @ points[current]) + norms[current]
        nearest = torch.minimum(nearest, distances)
        current = nearest.argmax()
        selected.append(current)
    return torch.stack(selected)


@torch.no_grad()
def kmeanspp_seeds(points: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding only (no Lloyd iterations, ASSUMPTION A7): ``(N, C) -> (k, C)``."""
    if points.shape[0] > MULTINOMIAL_LIMIT:
        msg = f"k-means++ needs at most {MULTINOMIAL_LIMIT} points, got {points.shape[0]}; set max_cluster_patches"
        raise ValueError(msg)
    first = torch.randint(points.shape[0], (1,), generator=generator)
    seeds = [points[first]]
    nearest = squared_distances(points, seeds[0]).squeeze(1)
    for _ in range(1, k):
        index = torch.multinomial(_safe_probabilities(nearest), 1, generator=generator)
        seeds.append(points[index])
        nearest = torch.minimum(nearest, squared_distances(points, seeds[-1]).squeeze(1))
    return torch.cat(seeds)


def default_coreset_alpha(k: int) -> float:
    """A8: alpha = 16 (ln k + 2), the k-means++ approximation bound used by the cited coreset work."""
    return 16.0 * (math.log(k) + 2.0)


def sensitivities(
    points: torch.Tensor,
    seeds: torch.Tensor,
    alpha: float,
    uniform_coef: float = 2.0,
) -> torch.Tensor:
    """Sensitivity ``s(x)`` of Algorithm 2 as printed (A8), shape ``(N,)``.

    ``s(x) = alpha d(x,B)^2 + 2 alpha / |X_j| sum_{X_j} d^2 + uniform_coef / |X_j| sum_X d^2`` for x in X_j.
    """
    nearest, labels = squared_distances(points, seeds).min(dim=1)
    counts = torch.bincount(labels, minlength=seeds.shape[0]).clamp_min(1).to(points.dtype)
    cluster_cost = torch.zeros(seeds.shape[0], dtype=points.dtype, device=points.device).index_add_(0, labels, nearest)
    per_cluster = 2.0 * alpha * (cluster_cost / counts)[labels]
    return alpha * nearest + per_cluster + uniform_coef * nearest.sum() / counts[labels]


@torch.no_grad()
def sensitivity_coreset(
    points: torch.Tensor,
    seeds: torch.Tensor,
    size: int,
    alpha: float,
    uniform_coef: float = 2.0,
    replacement: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a weighted coreset of ``size`` points with probabilities ``q = s / sum(s)`` (A9).

    Returns:
        The coreset ``(m, C)``, its weights ``gamma = 1 / (m q)`` ``(m,)`` and the drawn indices ``(m,)``.
    """
    probabilities = _safe_probabilities(sensitivities(points, seeds, alpha, uniform_coef))
    if not replacement:
        size = min(size, points.shape[0])
    indices = torch.multinomial(probabilities, size, replacement=replacement, generator=generator)
    weights = 1.0 / (size * probabilities[indices])
    return points[indices], weights, indices


class WeightedDiagGMM(DynamicBufferMixin, nn.Module):
    """Gaussian mixture with diagonal covariances fitted by weighted EM (Eq. 3, A10).

    Maximises ``sum_i gamma_i log p(x_i | theta)``; initialised from hard assignments to
    ``init_means``; runs in float64.

    Args:
        n_components: Number of mixture components ``k``.
        max_iter: Maximum EM iterations (A10: 100).
        tol: Stop when the weighted mean log-likelihood changes less than this (A10: 1e-3).
        reg_covar: Added to every variance (A10: 1e-6).

    Example:
        >>> x = torch.cat([torch.randn(50, 2), torch.randn(50, 2) + 10])
        >>> gmm = WeightedDiagGMM(2).fit(x, torch.ones(100), x[[0, 99]])
        >>> gmm.means.shape
        torch.Size([2, 2])
    """

    def __init__(self, n_components: int, max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 1e-6) -> None:
        super().__init__()
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.register_buffer("means", torch.empty(0))
        self.register_buffer("variances", torch.empty(0))
        self.register_buffer("weights", torch.empty(0))
        self.n_iter = 0

    def _m_step(self, data: torch.Tensor, sample_weight: torch.Tensor, resp: torch.Tensor) -> None:
        weighted = sample_weight[:, None] * resp
        totals = weighted.sum(0) + 10 * torch.finfo(data.dtype).eps
        self.weights = totals / totals.sum()
        self.means = (weighted.T @ data) / totals[:, None]
        second = (weighted.T @ data.pow(2)) / totals[:, None]
        self.variances = (second - self.means.pow(2)).clamp_min(0) + self.reg_covar

    def log_joint(self, data: torch.Tensor) -> torch.Tensor:
        """``log(w_k) + log N(x | mu_k, diag var_k)`` for every row and component: ``(N, k)``."""
        data = data.to(self.means.dtype)
        precision = 1.0 / self.variances
        mahalanobis = (
            data.pow(2) @ precision.T
            - 2.0 * data @ (self.means * precision).T
            + (self.means.pow(2) * precision).sum(1)[None]
        )
        log_det = self.variances.log().sum(1)
        return self.weights.log()[None] - 0.5 * (mahalanobis + log_det[None] + data.shape[1] * math.log(2 * math.pi))

    def score_samples(self, data: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of every row, ``(N,)``."""
        return torch.logsumexp(self.log_joint(data), dim=1)

    @torch.no_grad()
    def fit(self, data: torch.Tensor, sample_weight: torch.Tensor, init_means: torch.Tensor) -> WeightedDiagGMM:
        """Fit on ``data`` ``(m, C)`` with weights ``sample_weight`` ``(m,)`` from ``init_means`` ``(k, C)``."""
        data = data.double()
        sample_weight = sample_weight.double()
        init_means = init_means.double()
        labels = squared_distances(data, init_means).argmin(dim=1)
        resp = nn.functional.one_hot(labels, self.n_components).double()
        self._m_step(data, sample_weight, resp)
        previous = -math.inf
        for iteration in range(1, self.max_iter + 1):
            log_joint = self.log_joint(data)
            likelihood = float((sample_weight * torch.logsumexp(log_joint, 1)).sum() / sample_weight.sum())
            self._m_step(data, sample_weight, torch.softmax(log_joint, dim=1))
            self.n_iter = iteration
            if abs(likelihood - previous) < self.tol:
                break
            previous = likelihood
        return self


@torch.no_grad()
def build_centre_set(
    pool: torch.Tensor,
    n_components: int,
    config: ClusteringConfig = ClusteringConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Algorithm 2: pooled patches ``(N, C)`` -> centres (``(k, C)`` GMM means or ``(m', C)`` unique coreset points).

    Args:
        pool: The pooled patch features.
        n_components: Number of GMM clusters k.
        config: Coreset and GMM settings (``max_cluster_patches``, ``recluster_every_n_epochs`` and ``seed``
            act in the Lightning module).
        generator: Random generator of the k-means++ and coreset draws.
    """
    pool = pool.float()
    seeds = kmeanspp_seeds(pool, config.bicriteria_size or n_components, generator)
    alpha = default_coreset_alpha(n_components) if config.coreset_alpha is None else config.coreset_alpha
    size = max(math.ceil(config.sampling_rate * pool.shape[0]), n_components)
    coreset, weights, indices = sensitivity_coreset(
        pool, seeds, size, alpha, config.sensitivity_uniform_coef, config.coreset_replacement, generator
    )
    if config.center_source == "coreset":
        return pool[torch.unique(indices)]  # A9: duplicates removed (T16)
    init_means = seeds if seeds.shape[0] == n_components else kmeanspp_seeds(coreset, n_components, generator)
    gmm = WeightedDiagGMM(
        n_components, max_iter=config.gmm_max_iter, tol=config.gmm_tol, reg_covar=config.gmm_reg_covar
    )
    return gmm.fit(coreset, weights, init_means).means.float()
