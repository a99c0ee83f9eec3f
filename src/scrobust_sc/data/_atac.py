"""scATAC-seq values on sparse matrices: binarisation, TF-IDF, peak frequencies; never densified."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scrobust_sc._constants import TARGET_SUM

from ._ranking import _row_chunks, column_moments, dispersion
from ._validation import sampled_nonzero_values

#: How peak accessibility becomes token values: 1 for an accessible peak, or its TF-IDF.
ATAC_VALUES = ("binary", "tfidf")
MODALITIES = ("rna", "atac")


def check_atac_values(matrix, *, where: str = "the peak matrix") -> None:
    """Raise ``ValueError`` unless ``matrix`` holds peak counts or 0/1 (non-negative integers).

    Run :func:`~scrobust_sc.data.check_finite_nonnegative` first.

    Examples
    --------
    >>> import numpy as np
    >>> check_atac_values(np.array([[0, 1, 4]]))
    """
    values = sampled_nonzero_values(matrix, where=where)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(
            f"{where} holds non-integer values (max {float(values.max()):.2f}): scATAC input must be peak counts "
            "or binary 0/1. Pass the raw counts (`layer=`); TF-IDF is computed inside the model with "
            "`atac_values='tfidf'`."
        )


def binarize(matrix) -> sparse.csr_matrix:
    """1 where a peak is accessible (count > 0), as a float32 CSR matrix.

    Examples
    --------
    >>> import numpy as np
    >>> binarize(np.array([[0, 3], [1, 0]])).toarray().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    out = sparse.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def peak_cell_counts(matrix) -> np.ndarray:
    """Number of cells in which each peak is accessible, chunk by chunk.

    Examples
    --------
    >>> import numpy as np
    >>> peak_cell_counts(np.array([[0, 2], [1, 5]])).tolist()
    [1, 2]
    """
    counts = np.zeros(matrix.shape[1], dtype=np.int64)
    for block in _row_chunks(matrix):
        block.eliminate_zeros()
        counts += np.bincount(block.indices, minlength=matrix.shape[1])
    return counts


def inverse_document_frequency(matrix) -> np.ndarray:
    """IDF of each peak: ``n_cells / n_cells_accessible`` (1 cell at least), float64.

    Examples
    --------
    >>> import numpy as np
    >>> inverse_document_frequency(np.array([[0, 2], [1, 5]])).tolist()
    [2.0, 1.0]
    """
    return _idf_of_counts(matrix.shape[0], peak_cell_counts(matrix))


def _idf_of_counts(n_cells: int, counts: np.ndarray) -> np.ndarray:
    """:func:`inverse_document_frequency` from per-peak cell counts already read."""
    return n_cells / np.maximum(counts, 1).astype(np.float64)


def tfidf_matrix(matrix, idf: np.ndarray | None = None, *, scale_factor: float = TARGET_SUM) -> sparse.csr_matrix:
    """TF-IDF of binarised peak counts, ``log1p(tf * idf * scale_factor)`` (Stuart et al. 2019).

    ``tf`` is 1 / (accessible peaks of the cell) for each accessible peak; ``idf`` is
    ``n_cells / n_cells_accessible`` of the peak. Memory is proportional to the non-zeros.

    Parameters
    ----------
    matrix
        Cells x peaks counts (dense or sparse).
    idf
        Per-peak IDF, e.g. from the training data; ``None`` computes it from ``matrix``.
    scale_factor
        Multiplier before the log.

    Returns
    -------
    Float32 CSR matrix with the non-zero pattern of ``matrix``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1, 0], [3, 2]])
    >>> np.round(tfidf_matrix(x, scale_factor=1.0).toarray().astype(float), 3).tolist()
    [[0.693, 0.0], [0.405, 0.693]]
    """
    binary = binarize(matrix)
    if idf is None:
        idf = inverse_document_frequency(binary)
    idf = np.asarray(idf, dtype=np.float64).ravel()
    if idf.shape[0] != binary.shape[1]:
        raise ValueError(f"idf has {idf.shape[0]} values for {binary.shape[1]} peaks.")
    n_accessible = np.diff(binary.indptr)
    tf = np.repeat(1.0 / np.maximum(n_accessible, 1), n_accessible)
    binary.data = np.log1p(tf * idf[binary.indices] * scale_factor).astype(np.float32)
    return binary


def atac_moments(matrix, idf: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-peak mean and variance of the model's values: binary, or TF-IDF with ``idf``.

    The ATAC counterpart of :func:`~scrobust_sc.data.log_normalized_moments`, computed
    chunk by chunk. Binary values are ``log1p(1)``, as the model sees them.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = atac_moments(np.array([[1, 0], [1, 1]]), None)
    >>> mean.round(3).tolist(), var.round(3).tolist()
    ([0.693, 0.347], [0.0, 0.12])
    """

    def model_values(block):
        return tfidf_matrix(block, idf) if idf is not None else binarize(block) * np.float32(np.log1p(1.0))

    return column_moments(matrix, model_values)


def atac_dispersion(matrix, idf: np.ndarray | None) -> np.ndarray:
    """Dispersion (variance / mean) per peak of the model's values: binary, or TF-IDF with ``idf``.

    The ATAC counterpart of :func:`~scrobust_sc.data.hvg_score`.

    Examples
    --------
    >>> import numpy as np
    >>> atac_dispersion(np.array([[1, 0], [1, 1]]), None).round(3).tolist()
    [0.0, 0.347]
    """
    return dispersion(*atac_moments(matrix, idf))


def top_peaks_mask(matrix, *, n_top: int | None = None, min_cells: int = 1) -> np.ndarray:
    """Boolean mask of the ``n_top`` most frequently accessible peaks seen in ``min_cells`` cells or more.

    Ties keep the original order; ``n_top=None`` keeps every peak passing ``min_cells``.

    Examples
    --------
    >>> import numpy as np
    >>> top_peaks_mask(np.array([[1, 0, 1], [1, 0, 0]]), n_top=1).tolist()
    [True, False, False]
    """
    return _top_counts_mask(peak_cell_counts(matrix), n_top=n_top, min_cells=min_cells)


def _top_counts_mask(counts: np.ndarray, *, n_top: int | None, min_cells: int = 1) -> np.ndarray:
    """:func:`top_peaks_mask` from per-peak cell counts already read."""
    keep = counts >= max(int(min_cells), 0)
    if n_top is not None:
        if n_top < 1:
            raise ValueError(f"n_top must be positive or None, not {n_top}.")
        order = np.argsort(-counts, kind="stable")
        order = order[keep[order]][:n_top]
        keep = np.zeros(counts.shape[0], dtype=bool)
        keep[order] = True
    return keep


def lsi(matrix, *others, n_components: int = 50, seed: int = 0) -> list[np.ndarray]:
    """Latent semantic indexing: a truncated SVD fit on ``matrix``, first component dropped, unit rows.

    ``matrix`` and ``others`` hold TF-IDF values of the same peaks (:func:`tfidf_matrix`),
    e.g. a training and a test set; the SVD is fit on ``matrix`` alone. The first
    component follows each cell's number of open peaks (depth), so it is dropped, and
    each cell's remaining components are scaled to unit length, so that Euclidean
    distances rank cells as cosine distances do (as Signac and ArchR use LSI). On the
    Granja bone-marrow peaks (one 80/20 split, kNN with k 10) accuracy was 0.662 with unit
    rows, 0.596 on the raw components and 0.450 with standardised components.

    Parameters
    ----------
    matrix
        Cells x peaks values the SVD is fit on (dense or sparse).
    *others
        Further cells x peaks matrices projected on the same components.
    n_components
        Components kept (after the first is dropped); fewer when the matrix is smaller.
    seed
        Seed of the randomised SVD.

    Returns
    -------
    One array of shape ``(cells, components)`` per matrix, ``matrix``'s first.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.random(60, 40, density=0.2, format="csr", random_state=0)
    >>> train, test = lsi(x[:50], x[50:], n_components=5)
    >>> train.shape, bool(np.allclose(np.linalg.norm(test, axis=1), 1.0))
    ((50, 5), True)
    """
    svd = fit_lsi(matrix, n_components=n_components, seed=seed)
    return [lsi_transform(svd, m) for m in (matrix, *others)]


def fit_lsi(matrix, *, n_components: int = 50, seed: int = 0):
    """The truncated SVD of :func:`lsi`, fitted on ``matrix``; ``None`` when it is too small for two components.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> x = sp.random(60, 40, density=0.2, format="csr", random_state=0)
    >>> lsi_transform(fit_lsi(x, n_components=5), x[:3]).shape
    (3, 5)
    """
    from sklearn.decomposition import TruncatedSVD

    k = min(n_components + 1, matrix.shape[1] - 1, matrix.shape[0] - 1)
    if k < 2:
        return None
    return TruncatedSVD(k, random_state=seed).fit(matrix)


def lsi_transform(svd, matrix) -> np.ndarray:
    """``matrix`` projected by :func:`fit_lsi`'s SVD: the first component dropped, unit rows.

    Examples
    --------
    >>> import numpy as np
    >>> lsi_transform(None, np.ones((2, 3))).shape  # an SVD too small to fit: no components
    (2, 0)
    """
    if svd is None:
        return np.zeros((matrix.shape[0], 0))
    z = svd.transform(matrix)[:, 1:]
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
