"""scrobust-sc: scRobust for Scanpy users."""

import logging

from . import benchmark, data, model, nn, pl, pp, tl
from ._settings import settings
from .model import SCRobust

__version__ = "0.1.0"

logging.getLogger("scrobust_sc").addHandler(logging.NullHandler())

__all__ = ["SCRobust", "__version__", "benchmark", "data", "model", "nn", "pl", "pp", "settings", "tl"]
