"""Plots built on matplotlib and scanpy."""

from ._history import history
from ._plots import attention_markers, confusion, pathway_embedding

__all__ = ["attention_markers", "confusion", "history", "pathway_embedding"]
