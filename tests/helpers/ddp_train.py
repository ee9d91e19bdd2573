"""Train one model on a fake MVTec AD category in one or several CPU processes.

Lightning's ``ddp`` strategy starts the other processes by running this same script again, so
multi-process runs live in a script of their own rather than inside a pytest process. Every rank
writes the buffers it ended with (``buffers_rank<N>.pt``); the checkpoint goes to ``model.ckpt`` and
rank 0 writes ``result.json``. Testing is left to the caller, in a single process: under DDP,
Lightning's distributed sampler pads the test set with repeated images, which would bias metrics.

Example:
    python -m tests.helpers.ddp_train --model anomalib_ext.models.SMCC --init-args '{"pre_trained": false}' \
        --data-root /tmp/fake --devices 2 --strategy ddp --out /tmp/run
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything


def _load_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="class path, e.g. anomalib_ext.models.SMCC")
    parser.add_argument("--init-args", default="{}", help="JSON of constructor arguments")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", default="toy")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="global training batch, split over processes")
    parser.add_argument("--image-size", type=int, default=None, help="side of the model's pre-processor resize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model_class = _load_class(args.model)
    init_args = json.loads(args.init_args)
    if args.image_size is not None:
        init_args["pre_processor"] = model_class.configure_pre_processor(image_size=(args.image_size, args.image_size))
    model = model_class(**init_args)
    datamodule = MVTecAD(
        root=args.data_root,
        category=args.category,
        train_batch_size=args.batch_size // args.devices,
        eval_batch_size=4,
        num_workers=0,
    )
    engine = Engine(
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        max_epochs=args.max_epochs,
        default_root_dir=out,
        logger=False,
        enable_progress_bar=False,
        deterministic=True,
    )
    engine.fit(model=model, datamodule=datamodule)
    engine.trainer.save_checkpoint(out / "model.ckpt")  # collective: every rank calls it, rank 0 writes

    rank = engine.trainer.global_rank
    buffers = {name: tensor.detach().cpu().clone() for name, tensor in model.named_buffers()}
    torch.save(buffers, out / f"buffers_rank{rank}.pt")
    if rank == 0:
        result = {"world_size": engine.trainer.world_size, "strategy": type(engine.trainer.strategy).__name__}
        (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
