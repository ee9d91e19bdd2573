"""FMGRD behaves like an anomaly detector after brief training on normal images only.

Trained for a few epochs on 8 normal images of the fake texture (EfficientNet-Lite0 teacher with its
real ImageNet weights, 64 px), the model must (1) rank every defective test image above the normal
ones in the large majority of pairs (image AUROC >= 0.9) and (2) put the maximum of each defective
image's map inside its defect mask or within ``ARGMAX_TOLERANCE_PX`` pixels of it. An untrained
student gives maps with no relation to the defects, so both checks can fail.
"""

from __future__ import annotations

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_ext.models import FMGRD
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

IMAGE_SIZE = 64
EPOCHS = 5
MIN_IMAGE_AUROC = 0.9
ARGMAX_TOLERANCE_PX = 4.0


def pairwise_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (defective, normal) pairs ranked correctly, ties counting one half."""
    defect, normal = scores[labels == 1], scores[labels == 0]
    diff = defect[:, None] - normal[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def test_defects_score_higher_and_the_map_peaks_on_the_defect(tmp_path):
    root = make_fake_mvtec(tmp_path / "data", n_train=8, n_test_good=4, n_test_defect=4, image_size=IMAGE_SIZE)
    seed_everything(0)
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=8, num_workers=0)
    model = FMGRD(
        backbone="efficientnet_lite0",
        layers=["blocks.1", "blocks.2", "blocks.4"],
        pre_trained=True,
        sigma=1,
        pre_processor=FMGRD.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)),
    )
    engine = Engine(
        max_epochs=EPOCHS, default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, limit_val_batches=0
    )
    engine.fit(model=model, datamodule=datamodule)

    datamodule.setup()
    model.eval()
    scores, labels, distances = [], [], []
    for batch in datamodule.test_dataloader():
        with torch.no_grad():
            out = model.model(model.pre_processor.transform(batch.image))  # raw map: no min-max post-processing
        scores.append(out.pred_score.flatten())
        labels.append(batch.gt_label.flatten().long())
        for label, mask, anomaly_map in zip(batch.gt_label, batch.gt_mask, out.anomaly_map, strict=True):
            if not label:
                continue
            peak = int(anomaly_map.flatten().argmax())
            y, x = divmod(peak, anomaly_map.shape[-1])
            ys, xs = torch.nonzero(mask.squeeze(), as_tuple=True)
            distances.append(float(torch.sqrt((ys - y).float() ** 2 + (xs - x).float() ** 2).min()))
    scores_t, labels_t = torch.cat(scores), torch.cat(labels)
    auroc = pairwise_auroc(scores_t, labels_t)
    assert auroc >= MIN_IMAGE_AUROC, f"image AUROC {auroc:.3f}, scores {scores_t.tolist()}, labels {labels_t.tolist()}"
    assert len(distances) == 4
    assert max(distances) <= ARGMAX_TOLERANCE_PX, f"map peaks {distances} px away from the defects"
