"""scATAC-seq preprocessing: the peaks a model uses, TF-IDF for baselines. Never densified."""

from __future__ import annotations

import anndata as ad
import numpy as np
from scipy import sparse

from scrobust_sc._constants import TARGET_SUM
from scrobust_sc.data._atac import inverse_document_frequency, peak_cell_counts, tfidf_matrix, top_peaks_mask
from scrobust_sc.data._validation import check_finite_nonnegative, check_whole_number


def _check_peak_values(matrix) -> None:
    """Refuse NaN, infinite or negative peak values in memory (a backed matrix is read as it is used)."""
    if isinstance(matrix, np.ndarray) or sparse.issparse(matrix):
        check_finite_nonnegative(matrix, where="the peak matrix")


def _matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is None: pass the layer holding the peak counts with `layer=`.")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    return adata.layers[layer]


def select_peaks(
    adata: ad.AnnData,
    *,
    n_top: int | None = None,
    min_cells: int = 1,
    layer: str | None = None,
    return_mask: bool = False,
) -> ad.AnnData | np.ndarray:
    """The peaks a model uses: the ``n_top`` most frequently accessible, seen in ``min_cells`` cells or more.

    Counting is done chunk by chunk on the non-zeros (memory proportional to them); the
    input is never densified nor modified. Ties keep the original peak order.

    Parameters
    ----------
    adata
        Cells x peaks (counts or 0/1), dense, sparse or backed.
    n_top
        Peaks to keep; ``None`` keeps every peak passing ``min_cells``.
    min_cells
        Minimum number of cells in which a peak is accessible.
    layer
        Layer with the counts (``None``: ``X``).
    return_mask
        Return the boolean mask over ``var`` instead of a subset copy.

    Returns
    -------
    A new AnnData with the kept peaks (``var["n_cells_accessible"]`` added), or the mask.

    Examples
    --------
    >>> import anndata as ad, numpy as np, scipy.sparse as sp
    >>> a = ad.AnnData(sp.csr_matrix(np.array([[1, 0, 2], [1, 0, 0], [3, 0, 1]], dtype=np.float32)))
    >>> select_peaks(a, n_top=2).shape
    (3, 2)
    >>> select_peaks(a, min_cells=3, return_mask=True).tolist()
    [True, False, False]
    """
    if n_top is not None:
        check_whole_number(n_top, "n_top", 1)
    check_whole_number(min_cells, "min_cells", 0)
    matrix = _matrix(adata, layer)
    mask = top_peaks_mask(matrix, n_top=n_top, min_cells=min_cells)
    if return_mask:
        return mask
    if not mask.any():
        raise ValueError(f"No peak is accessible in {min_cells} cells or more: lower `min_cells`.")
    counts = peak_cell_counts(matrix)
    if adata.isbacked:
        subset = adata[:, mask].to_memory()
    else:
        subset = adata[:, mask].copy()
    subset.var["n_cells_accessible"] = counts[mask]
    return subset


def tfidf(
    data,
    *,
    idf: np.ndarray | None = None,
    scale_factor: float = TARGET_SUM,
    layer: str | None = None,
    key_added: str = "tfidf",
    copy: bool = False,
):
    """TF-IDF of binarised peak counts, ``log1p(tf * idf * scale_factor)``, sparse.

    ``tf`` is 1 over the number of accessible peaks of the cell, ``idf`` is
    ``n_cells / n_cells_accessible`` of the peak (Stuart et al. 2019). This is the input of
    the usual scATAC baselines (logistic regression on TF-IDF; LSI = TF-IDF then
    ``TruncatedSVD``) and, with ``atac_values="tfidf"``, the values an SCRobust model sees.

    Parameters
    ----------
    data
        A cells x peaks matrix (dense or sparse): the TF-IDF matrix is returned. Or an
        AnnData: the result is written to ``layers[key_added]`` and the idf to
        ``var[f"{key_added}_idf"]``.
    idf
        Per-peak idf (e.g. of a reference, for a query); ``None`` computes it from ``data``.
    scale_factor
        Multiplier before the log.
    layer
        For an AnnData, the layer with the counts (``None``: ``X``).
    key_added
        Layer name for an AnnData.
    copy
        For an AnnData, return a modified copy instead of writing into it.

    Returns
    -------
    A float32 CSR matrix for matrix input; for an AnnData ``None``, or the copy.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1, 0], [3, 2]])
    >>> np.round(tfidf(x, scale_factor=1.0).toarray().astype(float), 3).tolist()
    [[0.693, 0.0], [0.405, 0.693]]
    >>> import anndata as ad
    >>> a = ad.AnnData(x.astype(np.float32))
    >>> tfidf(a); a.layers["tfidf"].nnz
    3
    """
    if not isinstance(data, ad.AnnData):
        _check_peak_values(data)
        return tfidf_matrix(data, idf, scale_factor=scale_factor)
    target = data.copy() if copy else data
    matrix = _matrix(target, layer)
    _check_peak_values(matrix)
    if idf is None:
        idf = inverse_document_frequency(matrix)
    target.layers[key_added] = tfidf_matrix(matrix, idf, scale_factor=scale_factor)
    target.var[f"{key_added}_idf"] = np.asarray(idf, dtype=np.float64)
    return target if copy else None
