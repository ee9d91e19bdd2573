"""What the package's five Lightning modules configure the same way, written once.

:class:`AnomalibExtModule` is a mixin placed *before* :class:`~anomalib.models.components.AnomalibModule`
in a model's bases (``class FMGRD(AnomalibExtModule, AnomalibModule)``), so ``AnomalibModule`` stays a
direct base, which :func:`anomalib.models.get_model` needs. It provides:

- the evaluator: :func:`anomalib_ext.models.defaults` metrics (image/pixel AUROC, F1-max, AP, AUPRO at
  FPR 0.3);
- the post-processor: :class:`~anomalib_ext.post_processing.OrderPreservingPostProcessor` (metrics on
  unclipped order);
- one random generator per process, ``self.generator``, seeded from the seed ``seed_everything`` set plus
  the global rank (so DDP ranks draw different corruptions and masks), created at fit start and
  dropped at fit end (a ``torch.Generator`` can be neither copied nor exported);
- the fixed input size a model builds its buffers for, with one error when the pre-processor has none
  (:meth:`AnomalibExtModule.fixed_input_size`);
- what the trainer and anomalib need to know of every model here: one-class learning, no gradient clipping
  and no sanity validation (as anomalib's reverse distillation and DRAEM; a model may override);
- frozen sub-networks kept in eval mode: a model lists them in ``frozen_modules`` (attribute paths in
  ``self.model``); they are frozen (``requires_grad_(False)``) when training starts and put back in eval
  mode at every training epoch and batch, because Lightning restores each module's mode after
  validation without calling ``train()``;
- ONNX exports at opset :data:`ONNX_OPSET` (18) unless the caller names one (see
  :meth:`AnomalibExtModule.to_onnx`);
- INT8_PTQ export that keeps everything from the last quantisable operation (the anomaly map's
  Gaussian smoothing) to the graph's outputs in float: quantised, FMGRD's image score collapsed to
  ~1e-6 (f32 ~1.46) while its map stayed close; in float the INT8 score is 1.458 (see
  :meth:`AnomalibExtModule._post_training_quantization_ov`).

Example:
    >>> class MyModel(AnomalibExtModule, AnomalibModule):  # doctest: +SKIP
    ...     frozen_modules = ("encoder",)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from torch import nn
from torch.utils.data import DataLoader

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.defaults import default_evaluator
from anomalib_ext.post_processing import OrderPreservingPostProcessor

if TYPE_CHECKING:
    from pathlib import Path

    import nncf
    import openvino as ov
    from anomalib.data import AnomalibDataModule

logger = logging.getLogger(__name__)

#: anomalib's own recommendation for the number of calibration images.
RECOMMENDED_CALIBRATION_IMAGES = 300

#: The ONNX opset of the models' exports: the one torch's exporter builds its graphs in.
ONNX_OPSET = 18


class AnomalibExtModule:
    """Mixin of the shared concerns of the package's models (see the module docstring)."""

    #: Attribute paths, relative to ``self.model``, of sub-networks that never train.
    frozen_modules: tuple[str, ...] = ()

    #: OpenVINO operation types that INT8_PTQ may quantise (see :meth:`_post_training_quantization_ov`);
    #: ``None``: every type NNCF quantises, as anomalib's export.
    int8_quantised_types: tuple[str, ...] | None = None

    #: The per-process random generator (``None`` outside ``fit``).
    generator: torch.Generator | None = None

    model: nn.Module

    @property
    def learning_type(self) -> LearningType:
        """One-class: every model here trains on normal images only."""
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation, as anomalib's reverse distillation and DRAEM."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image/pixel AUROC, F1-max and AP, and AUPRO up to FPR 0.3 (the papers' PRO)."""
        return default_evaluator()

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's post-processor with an order-preserving normalisation (no clamping ties in metrics)."""
        return OrderPreservingPostProcessor()

    def fixed_input_size(self, reason: str) -> tuple[int, int]:
        """The pre-processor's input size (height, width), which ``reason`` says the model needs.

        Raises:
            ValueError: The pre-processor does not resize to a fixed size (the message names the model).
        """
        size = self.input_size  # type: ignore[attr-defined]
        if size is None:
            msg = (
                f"{type(self).__name__} needs a fixed input size ({reason}): pass a pre-processor that resizes "
                "(or pre_processor=True for the model's default)."
            )
            raise ValueError(msg)
        return tuple(size)

    def frozen(self) -> list[nn.Module]:
        """The sub-networks named in ``frozen_modules``."""
        return [self.model.get_submodule(path) for path in self.frozen_modules]

    def keep_frozen_in_eval(self) -> None:
        """Put the frozen sub-networks in eval mode (BatchNorm statistics and dropout stay fixed)."""
        for module in self.frozen():
            module.eval()

    def on_fit_start(self) -> None:
        """Create the per-process generator and freeze the frozen sub-networks."""
        super().on_fit_start()  # type: ignore[misc]
        self.generator = rank_generator(None, self.global_rank, self.device)  # type: ignore[attr-defined]
        for module in self.frozen():
            module.requires_grad_(False)

    def on_fit_end(self) -> None:
        """Drop the generator so the module can be copied and exported."""
        super().on_fit_end()  # type: ignore[misc]
        self.generator = None

    def on_train_epoch_start(self) -> None:
        """Frozen sub-networks back to eval (Lightning restored their mode after validation)."""
        super().on_train_epoch_start()  # type: ignore[misc]
        self.keep_frozen_in_eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Frozen sub-networks in eval for every step (cheap, and robust to hooks that call ``train()``)."""
        super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]
        self.keep_frozen_in_eval()

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export to ONNX as anomalib (also the first step of its OpenVINO export), at opset 18 by default.

        anomalib asks for opset 14; torch's exporter builds every graph in opset 18 and then converts it
        down. For all five models here that conversion failed (``tests/integration/test_contract.py``, tiny
        models; FMGRD, N2N and SMCC, for example, have a reduction whose ``axes`` input is computed, MLDFR
        a ``Pad`` with no adapter below opset 18): every export printed a ``RuntimeError`` traceback
        (``axes_input_to_attribute ... No initializer``) and the file stayed at opset 18 anyway.
        Exporting at 18 skips the conversion. A caller's ``opset_version`` still wins. Arguments as
        :meth:`anomalib.models.components.base.export_mixin.ExportMixin.to_onnx`.
        """
        kwargs.setdefault("opset_version", ONNX_OPSET)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)  # type: ignore[misc]

    @classmethod
    def _post_training_quantization_ov(cls, model: ov.Model, datamodule: AnomalibDataModule | None = None) -> ov.Model:
        """INT8 post-training quantisation as anomalib's, with the operations that feed the outputs left in float.

        anomalib's ``ExportMixin._post_training_quantization_ov`` (which ``Engine.export`` and
        ``anomalib export --compression_type INT8_PTQ`` call) quantises every operation NNCF can. Two
        changes:

        - The operations after the last quantisable one on the way to each output, and that one, are
          left in float (:func:`float_outputs`): for FMGRD that is the Gaussian smoothing of the anomaly
          map, and quantising it collapsed the image score to ~1e-6 (f32: 1.46) on the tiny model of
          ``tests/integration/test_int8.py``; left in float the score is 1.458.
        - Calibration runs one image at a time (the batch size of a static input otherwise), not in the
          datamodule's evaluation batches. Given batches, NNCF switches on ``batchwise_statistics``
          (statistics per item along the first axis), and after SMCC's reshape to patches that axis
          holds patches, not images: the ranges after the backbone came out too small and the clamped
          distances gave every test image the same score (INT8 image AUROC 0.500, f32 0.940: SMCC on
          DemoTextures ``brick``, the harness's ``int8-demo`` run in ``docs/deployment.md``); image by
          image the scores differ again. The images are the datamodule's validation set, as anomalib's.
        - A model can name the operation types to quantise in ``int8_quantised_types``; every other
          operation stays in float. NNCF otherwise also quantises the tapped feature maps where they
          enter SMCC's fusion (its pooling, resizing and concatenation), and 8-bit features there blur
          the small distances the score is made of. SMCC on ELPV mono (its whole-bank config, harness
          ``--int8``, ``docs/deployment.md``): image AUROC f32 0.948, INT8 of every type NNCF quantises
          0.789 (``--int8-types smcc=all``), INT8 of the convolutions and the k-NN ``MatMul`` only 0.932.
        - Weights are quantised to 7 bits in every layer (NNCF's ``OverflowFix.ENABLE``; its default fixes
          only the first layer). An INT8 model runs on whatever CPU the line PC has, and on x86 CPUs
          without VNNI (AVX2 only) 8-bit weights overflow the 16-bit sums of the integer kernels: on such
          a 2-core AMD EPYC (2026-12-07, ELPV mono, 250 training images) INT8 image AUROC with the default
          fix was SMCC 0.839 and RB-AE 0.747 (f32 0.947 / 0.813), with 7-bit weights 0.931 and 0.815.

        Errors are anomalib's.
        """
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        if datamodule is None:
            msg = "Datamodule must be provided for OpenVINO INT8_PTQ compression"
            raise ValueError(msg)
        datamodule.setup("fit")
        model_input = model.input(0)
        batch_size = model_input.shape[0] if model_input.partial_shape[0].is_static else 1
        dataloader = DataLoader(
            datamodule.val_data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=datamodule.num_workers,
            collate_fn=datamodule.external_collate_fn or datamodule.val_data.collate_fn,
        )
        if len(dataloader.dataset) < RECOMMENDED_CALIBRATION_IMAGES:
            logger.warning(
                f">{RECOMMENDED_CALIBRATION_IMAGES} images recommended for INT8 quantization, "
                f"found only {len(dataloader.dataset)} images",
            )
        calibration = nncf.Dataset(dataloader, lambda batch: batch["image"])
        ignored = float_outputs(model)
        if cls.int8_quantised_types is not None:
            present = {node.get_type_name() for node in model.get_ordered_ops()}
            ignored.types = sorted(present - set(cls.int8_quantised_types) - {"Parameter", "Constant", "Result"})
        # 7-bit weights in every layer: CPUs without VNNI (AVX2 only) multiply u8 x s8 pairs into 16-bit sums
        # that saturate with 8-bit weights; NNCF's default fixes the first layer only (see the docstring).
        overflow = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
        return nncf.quantize(model, calibration, ignored_scope=ignored, advanced_parameters=overflow)


#: OpenVINO operations that NNCF quantises (their inputs get FakeQuantize nodes).
QUANTISED_TYPES = frozenset({"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"})


def float_outputs(model: ov.Model) -> nncf.IgnoredScope:
    """An ``nncf.IgnoredScope`` naming every operation between the last quantisable one and each output.

    Walks up from each output through the operations that follow the network proper (a post-processor's
    normalisation, the image score, upsampling) and stops at, and includes, the first quantisable
    operation on each path: the anomaly map's Gaussian smoothing in the models here, with the pass
    before it where the smoothing is separable (:class:`~anomalib_ext.models.components.GaussianBlur`:
    a ``1 x k`` then a ``k x 1`` convolution; with only the last pass in float FMGRD's INT8 map was off
    by 0.42 of its range, ``tests/integration/test_int8.py``). Exported with its post-processor, the
    output-producing operation is the normalisation, so naming only that one left the smoothing
    quantised and FMGRD's score collapsed again.
    """
    import nncf

    names: set[str] = set()
    stack = [result.input_value(0).get_node() for result in model.get_results()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in names or node.get_type_name() in {"Constant", "Parameter"}:
            continue
        names.add(name)
        if node.get_type_name() in QUANTISED_TYPES:
            while _is_filter_pass(node) and _is_filter_pass(node.input_value(0).get_node()):
                node = node.input_value(0).get_node()
                names.add(node.get_friendly_name())
            continue
        stack.extend(node.input_value(index).get_node() for index in range(node.get_input_size()))
    return nncf.IgnoredScope(names=sorted(names), validate=False)


def _is_filter_pass(node: ov.Node) -> bool:
    """A convolution with a ``1 x k`` or ``k x 1`` kernel (k > 1): one pass of a separable filter."""
    if node.get_type_name() not in {"Convolution", "GroupConvolution"}:
        return False
    shape = node.input(1).get_partial_shape()
    if not shape.is_static:
        return False
    height, width = (dimension.get_length() for dimension in list(shape)[-2:])
    return min(height, width) == 1 and max(height, width) > 1
