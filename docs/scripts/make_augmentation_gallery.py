"""Draw every augmentation family on a real photo, with its mask, into docs/images/augmentations_gallery.png.

Usage:
    .venv/bin/python docs/scripts/make_augmentation_gallery.py [--out docs/images/augmentations_gallery.png]

The photo is scikit-image's ``brick`` (a real surface, 512 x 512 grey, shown as RGB at 256 x 256).
Top row: the corrupted image; bottom row: the mask the augmentation returns (white = changed).
Columns: the original; RandomPatchDamage (MLDFR) with each of its three paper modes on the same
squares; PerlinTextureAnomaly (RB-AE) with textures from a folder (scikit-image ``coffee`` and
``chelsea`` written as PNGs to a temporary folder) and with cut-paste from another image of the
batch (``gravel``); NoiseBlend (N2N) with the paper's lambda 0.3 and N(0.5, 0.5) in N2N's
normalised space. Every corruption is seeded, so the image is reproducible.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from skimage import data
from torch.nn import functional as F
from torchvision.io import write_png

from anomalib_ext.augment import NoiseBlend, PerlinTextureAnomaly, RandomPatchDamage

SIZE = 256
PERLIN_SEED = 4


def photo(name: str) -> torch.Tensor:
    """A scikit-image photo as a (1, 3, SIZE, SIZE) float tensor in [0, 1]."""
    array = getattr(data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(tensor, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "images" / "augmentations_gallery.png"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    brick = photo("brick")
    panels: list[tuple[str, torch.Tensor, torch.Tensor]] = [
        ("original (skimage brick)", brick, torch.zeros(1, 1, SIZE, SIZE))
    ]

    for mode, label in (("blur", "Gaussian blur"), ("mask", "black fill"), ("white", "white fill")):
        damage = RandomPatchDamage(modes=(mode,), seed=0)  # paper: 180 squares of side H/24, sigma 9/384 H
        damaged, mask = damage(brick)
        panels.append((f"RandomPatchDamage\n{label}", damaged, mask))

    with tempfile.TemporaryDirectory() as folder:
        for name in ("coffee", "chelsea"):
            write_png((photo(name)[0] * 255).round().to(torch.uint8), str(Path(folder) / f"{name}.png"))
        from_folder = PerlinTextureAnomaly(texture_dir=folder, seed=PERLIN_SEED)
        defective, mask = from_folder(brick)
        panels.append(("PerlinTextureAnomaly\ntexture folder", defective, mask))

    batch = torch.cat([brick, photo("gravel")])
    cut_paste = PerlinTextureAnomaly(texture_source="batch", seed=PERLIN_SEED)
    defective, mask = cut_paste(batch)
    panels.append(("PerlinTextureAnomaly\ncut-paste from batch", defective[:1], mask[:1]))

    normalised = (brick - 0.5) / 0.5  # N2N's pre-processing
    noisy, mask = NoiseBlend(noise_lambda=0.3, noise_mean=0.5, noise_std=0.5, seed=0)(normalised)
    panels.append(("NoiseBlend\nlambda 0.3, N(0.5, 0.5)", (noisy * 0.5 + 0.5).clamp(0, 1), mask))

    figure, axes = plt.subplots(2, len(panels), figsize=(2.3 * len(panels), 5.0))
    for column, (title, image, mask) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(image[0].permute(1, 2, 0).numpy())
        top.set_title(title, fontsize=9)
        bottom.imshow(mask[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        bottom.set_xlabel(f"mask: {mask.mean().item():.0%} of pixels", fontsize=8)
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
