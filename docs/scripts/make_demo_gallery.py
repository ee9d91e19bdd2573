"""Draw a few DemoTextures defects with their masks into docs/images/demo_defects.png.

Usage:
    .venv/bin/python docs/scripts/make_demo_gallery.py [--out docs/images/demo_defects.png]

Builds the demo categories (seed 0, default options) into a temporary folder, then shows one
defect of every kind per texture: the defective crop on top, the crop with the mask outline below.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from anomalib_ext.data.demo import CATEGORIES, build_demo_textures
from anomalib_ext.data.demo_defects import DEFECT_KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "images" / "demo_defects.png")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rows = len(CATEGORIES) * 2
        figure, axes = plt.subplots(rows, len(DEFECT_KINDS), figsize=(2.0 * len(DEFECT_KINDS), 2.0 * rows))
        for c, category in enumerate(CATEGORIES):
            folder = build_demo_textures(tmp, category=category)
            for k, kind in enumerate(DEFECT_KINDS):
                image = np.asarray(Image.open(folder / "test" / kind / "000.png"))
                mask = np.asarray(Image.open(folder / "ground_truth" / kind / "000_mask.png")) > 0
                top, bottom = axes[2 * c, k], axes[2 * c + 1, k]
                top.imshow(image, cmap="gray", vmin=0, vmax=255)
                bottom.imshow(image, cmap="gray", vmin=0, vmax=255)
                bottom.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
                top.set_title(f"{category} / {kind}", fontsize=8)
                for axis in (top, bottom):
                    axis.set_xticks([])
                    axis.set_yticks([])
        figure.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.out, dpi=64)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
