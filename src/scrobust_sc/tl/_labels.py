"""Label columns written to ``obs`` in the form scanpy's grouping tools read."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd


def write_label_column(target: ad.AnnData, key: str, labels: np.ndarray, order: Sequence[str]) -> None:
    """Write ``labels`` to ``target.obs[key]`` as a categorical of the labels some cell received.

    The categories follow ``order`` (the model's types, then ``"Unknown"``), and only those
    present are kept: an empty category breaks scanpy's grouping tools
    (``sc.tl.rank_genes_groups``, ``sc.pl.dotplot``, ``sc.tl.dendrogram``). Colours stored
    by scanpy for an earlier column (``uns[f"{key}_colors"]``) are dropped when the
    categories change, as scanpy would otherwise give them to other labels by position.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> adata = ad.AnnData(np.zeros((3, 1)))
    >>> write_label_column(adata, "label", np.array(["B", "T", "B"]), ["T", "NK", "B", "Unknown"])
    >>> list(adata.obs["label"].cat.categories)
    ['T', 'B']
    """
    labels = np.asarray(labels).astype(str)
    present = set(labels)
    categories = [c for c in dict.fromkeys(str(c) for c in order) if c in present]
    categories += sorted(present - set(categories))
    earlier = target.obs[key] if key in target.obs else None
    if (
        earlier is None
        or not isinstance(earlier.dtype, pd.CategoricalDtype)
        or list(earlier.cat.categories) != categories
    ):
        target.uns.pop(f"{key}_colors", None)
    target.obs[key] = pd.Categorical(labels, categories=categories)
