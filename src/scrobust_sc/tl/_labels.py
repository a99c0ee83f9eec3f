"""Label columns written to ``obs`` in the form scanpy's grouping tools read."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from scrobust_sc._constants import UNKNOWN_COLOR, UNKNOWN_LABEL


def label_colors(categories: Sequence) -> list[str]:
    """Colours scanpy would give ``categories`` by default, with ``"Unknown"`` in light grey.

    scanpy colours the categories of an ``obs`` column in order from matplotlib's colour
    cycle (``rcParams["axes.prop_cycle"]``) when it holds enough colours, else from
    ``sc.pl.palettes.default_20``, ``default_28`` or ``default_102``, and every category
    grey beyond 102; it draws cells without a value in light grey. The same choice is made
    here, and ``"Unknown"`` gets the light grey of unassigned cells instead of its colour.

    Parameters
    ----------
    categories
        The categories of a label column, in order.

    Returns
    -------
    One hex colour per category.

    Examples
    --------
    >>> label_colors(["T", "B", "Unknown"])
    ['#1f77b4', '#ff7f0e', '#d3d3d3']
    """
    from matplotlib import rcParams
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    n = len(categories)
    cycle = rcParams["axes.prop_cycle"].by_key().get("color", [])
    if len(cycle) >= n:
        palette = list(cycle)
    elif n <= len(palettes.default_20):
        palette = palettes.default_20
    elif n <= len(palettes.default_28):
        palette = palettes.default_28
    elif n <= len(palettes.default_102):
        palette = palettes.default_102
    else:
        palette = ["grey"] * n
    return [
        to_hex(UNKNOWN_COLOR if category == UNKNOWN_LABEL else colour)
        for category, colour in zip(categories, palette[:n], strict=True)
    ]


def write_label_column(target: ad.AnnData, key: str, labels: np.ndarray, order: Sequence[str]) -> None:
    """Write ``labels`` to ``target.obs[key]`` as a categorical of the labels some cell received.

    The categories follow ``order`` (the model's types, then ``"Unknown"``), and only those
    present are kept: an empty category breaks scanpy's grouping tools
    (``sc.tl.rank_genes_groups``, ``sc.pl.dotplot``, ``sc.tl.dendrogram``). Colours stored
    by scanpy for an earlier column (``uns[f"{key}_colors"]``) are dropped when the
    categories change, as scanpy would otherwise give them to other labels by position;
    they are kept when the categories are the same. When some cell is ``"Unknown"`` and no
    colours are stored, ``uns[f"{key}_colors"]`` is set to :func:`label_colors`: scanpy's
    default colours, with ``"Unknown"`` light grey as scanpy draws unassigned cells.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 1)))
    >>> write_label_column(adata, "label", np.array(["B", "T", "B"]), ["T", "NK", "B", "Unknown"])
    >>> list(adata.obs["label"].cat.categories), "label_colors" in adata.uns
    (['T', 'B'], False)
    >>> write_label_column(adata, "label", np.array(["B", "Unknown", "B"]), ["T", "NK", "B", "Unknown"])
    >>> list(adata.uns["label_colors"])
    ['#1f77b4', '#d3d3d3']
    """
    labels = np.asarray(labels).astype(str)
    present = set(labels)
    categories = [c for c in dict.fromkeys(str(c) for c in order) if c in present]
    categories += sorted(present - set(categories))
    colors_key = f"{key}_colors"
    earlier = target.obs[key] if key in target.obs else None
    if (
        earlier is None
        or not isinstance(earlier.dtype, pd.CategoricalDtype)
        or list(earlier.cat.categories) != categories
    ):
        target.uns.pop(colors_key, None)
    target.obs[key] = pd.Categorical(labels, categories=categories)
    if UNKNOWN_LABEL in present and colors_key not in target.uns:
        target.uns[colors_key] = label_colors(categories)
