"""Plots built on matplotlib and scanpy."""

from ._history import history

__all__ = ["history"]
