"""The scvi-tools module (pure torch)."""

from ._module import SCRobustModule, default_view_size

__all__ = ["SCRobustModule", "default_view_size"]
