"""Issue 16's deliberate bugs, applied one at a time: each must make a fast test fail.

Each entry replaces one line of the package (the text must occur exactly once), runs the fast tests
named for it (``-m "not slow"``), restores the file and prints one markdown row: CAUGHT or SURVIVED.
Run from the repository root with a clean working tree (the file is restored even on Ctrl-C):

    python scripts/deliberate_bugs.py            # all of them, about 4 minutes on 2 cores
    python scripts/deliberate_bugs.py RBAE SMCC  # the entries whose name contains one of the words
"""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUGS = [
    (
        "MLDFR loss weights swapped",
        "anomalib_ext/models/mldfr/loss.py",
        "return (loss + self.loss_lambda * direction).mean()",
        "return (self.loss_lambda * loss + direction).mean()",
        "tests/unit/test_mldfr_loss.py tests/unit/test_mldfr_lightning.py",
    ),
    (
        "SMCC loss weights swapped",
        "anomalib_ext/models/smcc/loss.py",
        "total = self.lambda_c * loss_c + self.lambda_o * loss_o",
        "total = self.lambda_o * loss_c + self.lambda_c * loss_o",
        "tests/unit/test_smcc_components.py tests/unit/test_smcc_model.py tests/unit/test_smcc_config.py",
    ),
    (
        "RBAE phase-1 loss weights reversed",
        "anomalib_ext/models/rbae/loss.py",
        "total = sum(w * t for w, t in zip(self.w1, terms.values(), strict=True))",
        "total = sum(w * t for w, t in zip(reversed(self.w1), terms.values(), strict=True))",
        "tests/unit/test_rbae_loss.py tests/unit/test_rbae_components.py tests/unit/test_rbae_lightning.py",
    ),
    (
        "RBAE phase-2 loss weights reversed",
        "anomalib_ext/models/rbae/loss.py",
        "total = sum(w * t for w, t in zip(self.w2, terms.values(), strict=True))",
        "total = sum(w * t for w, t in zip(reversed(self.w2), terms.values(), strict=True))",
        "tests/unit/test_rbae_loss.py tests/unit/test_rbae_components.py tests/unit/test_rbae_lightning.py",
    ),
    (
        "N2N loss alpha swapped",
        "anomalib_ext/models/n2n/loss.py",
        "error = self.alpha * e_ssim + (1.0 - self.alpha) * e_l1 / self.data_range",
        "error = (1.0 - self.alpha) * e_ssim + self.alpha * e_l1 / self.data_range",
        "tests/unit/test_n2n_loss.py tests/unit/test_n2n_components.py tests/unit/test_n2n_model.py",
    ),
    (
        "FMGRD decoder term on the generated features",
        "anomalib_ext/models/fmgrd/loss.py",
        "loss = loss + self.decoder_weight * self.distance(teacher_features, decoded_features)",
        "loss = loss + self.decoder_weight * self.distance(teacher_features, generated_features)",
        "tests/unit/test_fmgrd_loss.py tests/unit/test_fmgrd_components.py tests/unit/test_fmgrd_model.py",
    ),
    (
        "RBAE fused map per-level weights reversed",
        "anomalib_ext/models/rbae/torch_model.py",
        "for w, am in zip(self.am_weights, maps, strict=True)",
        "for w, am in zip(reversed(self.am_weights), maps, strict=True)",
        "tests/unit/test_rbae_components.py tests/unit/test_rbae_lightning.py tests/unit/test_rbae_loss.py",
    ),
    (
        "Shared scorer: map transposed",
        "anomalib_ext/models/components/scoring.py",
        "        anomaly_map = self.blur(anomaly_map)\n",
        "        anomaly_map = self.blur(anomaly_map).transpose(-1, -2)\n",
        "tests/unit/test_components.py",
    ),
    (
        "MLDFR map transposed",
        "anomalib_ext/models/mldfr/anomaly_map.py",
        "grid_map = squared.sum(dim=1, keepdim=True)",
        "grid_map = squared.sum(dim=1, keepdim=True).transpose(-1, -2)",
        "tests/unit/test_mldfr_components.py tests/unit/test_mldfr_model.py",
    ),
    (
        "FMGRD teacher random while pre_trained=True",
        "anomalib_ext/models/fmgrd/torch_model.py",
        "self.encoder = FeatureExtractor(backbone, layers=list(layers), pre_trained=pre_trained).eval()",
        "self.encoder = FeatureExtractor(backbone, layers=list(layers), pre_trained=False).eval()",
        "tests/unit/test_fmgrd_model.py tests/unit/test_backbones.py tests/unit/test_model_defaults.py",
    ),
    (
        "SMCC backbone random while pre_trained=True",
        "anomalib_ext/models/smcc/torch_model.py",
        "backbone, layers=self.layers, pre_trained=pre_trained, requires_grad=True",
        "backbone, layers=self.layers, pre_trained=False, requires_grad=True",
        "tests/unit/test_smcc_model.py tests/unit/test_backbones.py tests/unit/test_model_defaults.py",
    ),
    (
        "SMCC bank gather across ranks removed",
        "anomalib_ext/models/smcc/lightning_model.py",
        "images = self.all_gather(local_images).reshape(-1, *local_images.shape[1:])",
        "images = local_images",
        "tests/unit/test_smcc_model.py tests/unit/test_smcc_components.py",
    ),
    (
        "MLDFR damage never reaches the restorer",
        "anomalib_ext/models/mldfr/lightning_model.py",
        "restored, target = self.model(batch.image, damaged, targets=targets)",
        "restored, target = self.model(batch.image, batch.image, targets=targets)",
        "tests/unit/test_mldfr_lightning.py",
    ),
]

only = sys.argv[1:]
print("| deliberate bug | result | fast tests | time |\n|---|---|---|---|")
for name, path, old, new, tests in BUGS:
    if only and not any(word in name for word in only):
        continue
    file = ROOT / path
    text = file.read_text()
    if text.count(old) != 1:
        print(f"| {name} | NOT APPLIED: the line occurs {text.count(old)} times in {path} | | |", flush=True)
        continue
    file.write_text(text.replace(old, new))
    try:
        start = time.time()
        command = [
            sys.executable,
            "-m",
            "pytest",
            *tests.split(),
            "-m",
            "not slow",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        verdict = "CAUGHT" if result.returncode != 0 else "SURVIVED"
        print(f"| {name} | {verdict} | {tests}: {summary[:100]} | {time.time() - start:.0f} s |", flush=True)
    finally:
        file.write_text(text)
