import torch
from anomalib.post_processing import PostProcessor

from anomalib_ext.post_processing import OrderPreservingPostProcessor


def _normalise(cls: type[PostProcessor], scores: torch.Tensor) -> torch.Tensor:
    # statistics of a normal-only validation set: scores in [0, 1], threshold at its maximum
    return cls._normalize(scores, torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0))


def test_defect_scores_far_above_the_normal_range_keep_their_order() -> None:
    scores = torch.tensor([0.2, 1.0, 1.6, 3.0, 40.0, 5e4])
    anomalib = _normalise(PostProcessor, scores)
    ours = _normalise(OrderPreservingPostProcessor, scores)
    assert (anomalib[2:] == 1).all()  # anomalib's clamp makes the four defect scores tie
    assert (ours.diff() > 0).all()
    assert ((ours > 0) & (ours < 1)).all()


def test_the_threshold_still_maps_to_one_half_so_labels_do_not_change() -> None:
    scores = torch.linspace(-3, 5, 33)
    threshold = torch.tensor(1.0)
    ours = OrderPreservingPostProcessor._normalize(scores, torch.tensor(0.0), torch.tensor(2.0), threshold)
    anomalib = PostProcessor._normalize(scores, torch.tensor(0.0), torch.tensor(2.0), threshold)
    assert torch.equal(ours > 0.5, anomalib > 0.5)
    assert torch.equal(ours < 0.5, anomalib < 0.5)


def test_without_statistics_scores_pass_unchanged() -> None:
    scores = torch.tensor([0.3, 7.0])
    nan = torch.tensor(float("nan"))
    assert torch.equal(OrderPreservingPostProcessor._normalize(scores, nan, nan, nan), scores)
