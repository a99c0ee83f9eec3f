"""scrobust-sc: scRobust for Scanpy users."""

import logging

from . import data, model, nn, pl, pp, tl
from .model import SCRobust

__version__ = "0.1.0"

logging.getLogger("scrobust_sc").addHandler(logging.NullHandler())

__all__ = ["SCRobust", "__version__", "data", "model", "nn", "pl", "pp", "tl"]
