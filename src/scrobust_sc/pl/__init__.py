"""Plots built on matplotlib and scanpy."""

from ._history import history, history_panels
from ._plots import attention_markers, confusion, pathway_embedding, spread_labels

__all__ = ["attention_markers", "confusion", "history", "history_panels", "pathway_embedding", "spread_labels"]
