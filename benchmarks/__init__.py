r"""Benchmark harness: every anomalib-ext model side by side with anomalib's, on any dataset.

One command trains and tests each model on each dataset category under a settings profile, for one
or several seeds, measures accuracy (the package evaluator: image and pixel AUROC, F1-max, average
precision, AUPRO up to FPR 0.3), training time, CPU inference latency and throughput (torch eager and
exported OpenVINO, optionally FP16/INT8), peak memory and sizes, and writes CSVs, markdown tables
(mean ± std over seeds), PNG charts and a grid of heat-map overlays. Its learning-curve mode
evaluates each job at chosen optimiser steps.

Example:
    From a shell, in the repository root::

        python -m benchmarks --profile cpu --models Padim,Patchcore \\
            --datasets DemoTextures --categories brick --seeds 0,1,2 --name demo

Modules:
    :mod:`benchmarks.profiles`: the ``cpu`` and ``paper`` settings and how a model name becomes a
        model (our configs through the registry, anomalib's built-ins with offline backbones).
    :mod:`benchmarks.measure`: latency, throughput, memory, size and OpenVINO accuracy measurements.
    :mod:`benchmarks.worker`: one model x category x seed, run in its own process.
    :mod:`benchmarks.curve`: the learning-curve callback.
    :mod:`benchmarks.runner`: the loop over jobs, resuming and crash recording.
    :mod:`benchmarks.aggregate`: statistics over seeds and categories.
    :mod:`benchmarks.report`: CSVs, markdown, charts and the heat-map grid.
"""
