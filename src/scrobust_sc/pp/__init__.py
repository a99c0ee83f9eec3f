"""Preprocessing helpers."""

from ._atac import select_peaks, tfidf
from ._dropout import add_dropout

__all__ = ["add_dropout", "select_peaks", "tfidf"]
