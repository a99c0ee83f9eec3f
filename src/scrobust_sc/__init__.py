"""scrobust-sc: scRobust for Scanpy users.

The submodules and :class:`SCRobust` load on first use, so that ``import scrobust_sc`` and
``scrobust --help`` do not wait for torch, scvi-tools and Lightning (about 12 s).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._settings import settings

if TYPE_CHECKING:
    from . import benchmark, data, model, nn, pl, pp, tl
    from . import module as module
    from . import train as train
    from .model import SCRobust

__version__ = "0.1.0"

logging.getLogger("scrobust_sc").addHandler(logging.NullHandler())

#: every public subpackage, including ``module`` and ``train``, which are not in ``__all__``
_SUBMODULES = ("benchmark", "data", "model", "module", "nn", "pl", "pp", "tl", "train")

__all__ = ["SCRobust", "__version__", "benchmark", "data", "model", "nn", "pl", "pp", "settings", "tl"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "SCRobust":
        return importlib.import_module(f"{__name__}.model").SCRobust
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
