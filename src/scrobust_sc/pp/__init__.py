"""Preprocessing helpers."""

from ._dropout import add_dropout

__all__ = ["add_dropout"]
