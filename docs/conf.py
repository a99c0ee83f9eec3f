"""Sphinx configuration of the scrobust-sc documentation.

Build with ``make docs`` (warnings are errors). Markdown pages and the tutorial notebooks
are read by myst-nb; notebooks are rendered with their committed outputs, never re-run.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

import scrobust_sc  # noqa: E402

project = "scrobust-sc"
author = "scrobust-sc developers"
copyright = f"{date.today().year}, {author}"
version = release = scrobust_sc.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Markdown
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# Notebooks: committed outputs are rendered; executing them takes minutes to an hour.
nb_execution_mode = "off"
nb_merge_streams = True

# API reference
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
# Type hints name classes of other packages that intersphinx cannot reach offline.
nitpicky = False

intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# HTML
html_theme = "furo"
html_title = f"scrobust-sc {version}"
html_static_path = ["_static"]
html_show_sourcelink = False
