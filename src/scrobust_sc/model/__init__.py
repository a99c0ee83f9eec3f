"""The user-facing model class."""

from ._model import PRESETS, SCRobust

__all__ = ["PRESETS", "SCRobust"]
