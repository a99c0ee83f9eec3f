"""The user-facing model class."""

from ._linear_expert import fit_linear_expert
from ._model import PRESETS, SCRobust

__all__ = ["PRESETS", "SCRobust", "fit_linear_expert"]
