"""Scanpy-style tools: thin wrappers that call the model and write obs / obsm / uns."""

from ._annotate import annotate, fit_annotator
from ._embed import embed

__all__ = ["annotate", "embed", "fit_annotator"]
