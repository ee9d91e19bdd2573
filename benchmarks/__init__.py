r"""Benchmark harness: every anomalib-ext model side by side with anomalib's, on any dataset.

One command trains and tests each model on each dataset category under a settings profile,
measures accuracy (image/pixel AUROC, AUPRO up to FPR 0.3, image F1), training time, CPU
inference latency and throughput (torch eager and exported OpenVINO), peak memory and sizes, and
writes a CSV, a markdown table, PNG charts and a grid of heat-map overlays.

Example:
    From a shell, in the repository root::

        python -m benchmarks --profile cpu --models Padim,Patchcore \\
            --datasets DemoTextures --categories brick --name demo

Modules:
    :mod:`benchmarks.profiles`: the ``cpu`` and ``paper`` settings and how a model name becomes a
        model (our configs, anomalib's built-ins with offline backbones).
    :mod:`benchmarks.measure`: latency, throughput, memory and size measurements.
    :mod:`benchmarks.worker`: one model x category, run in its own process.
    :mod:`benchmarks.runner`: the loop over jobs, resuming and crash recording.
    :mod:`benchmarks.report`: CSV, markdown, charts and the heat-map grid.
"""
