"""anomalib-ext: recent industrial anomaly-detection methods as first-class anomalib models.

Importing the package registers its models and datamodules with anomalib, so that
``anomalib.models.get_model("mldfr")`` and ``anomalib train --model MLDFR`` find them.
"""

__version__ = "0.1.0"

from anomalib_ext.registry import register

__all__ = ["register"]

register()
