"""Gene orderings computed once from the training data, never densifying the matrix."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from scrobust_sc._constants import TARGET_SUM

#: Cells per chunk when a dense pass over rows is needed.
CHUNK_CELLS = 4096
#: Smallest standard deviation :func:`inverse_std` divides by.
MIN_STD = 1e-2


def _row_chunks(matrix, chunk: int = CHUNK_CELLS):
    for start in range(0, matrix.shape[0], chunk):
        block = matrix[start : start + chunk]
        if sparse.issparse(block):
            block = block.tocsr()
            if not block.has_canonical_format:  # an entry stored twice (1 + 2) means their sum (3)
                block = block.copy()
                block.sum_duplicates()
            yield block
        else:
            block = np.asarray(block)
            yield sparse.csr_matrix(block.astype(np.float32) if block.dtype == np.float16 else block)


def expressed_fraction(matrix) -> np.ndarray:
    """Fraction of cells in which each gene is non-zero.

    Examples
    --------
    >>> import numpy as np
    >>> expressed_fraction(np.array([[0, 1], [2, 3]])).tolist()
    [0.5, 1.0]
    """
    counts = np.zeros(matrix.shape[1])
    for block in _row_chunks(matrix):
        block.eliminate_zeros()
        counts += np.bincount(block.indices, minlength=matrix.shape[1])
    return counts / max(matrix.shape[0], 1)


def unique_gene_score(matrix) -> np.ndarray:
    """Score of "highly unique genes": each gene's fraction of zeros (higher = rarer).

    Ordering a cell's expressed genes by this score, descending, gives its highly unique
    genes first. Ties keep the original gene order.

    Examples
    --------
    >>> import numpy as np
    >>> unique_gene_score(np.array([[0, 1], [2, 3]])).tolist()
    [0.5, 0.0]
    """
    return 1.0 - expressed_fraction(matrix)


def log_normalized_moments(matrix, *, input_is_log: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance of ``log1p(normalize_total(x, 1e4))``, chunk by chunk.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = log_normalized_moments(np.array([[1, 1], [1, 1]]), input_is_log=False)
    >>> np.allclose(mean, np.log1p(5000)), np.allclose(var, 0)
    (True, True)
    """
    return column_moments(matrix, lambda block: log_normalized_block(block, input_is_log=input_is_log))


def per_10k(block) -> sparse.csr_matrix:
    """Rows of a count block scaled to sum to 10,000 (empty rows stay 0).

    Examples
    --------
    >>> import numpy as np
    >>> per_10k(np.array([[1.0, 3.0], [0.0, 0.0]])).toarray().tolist()
    [[2500.0, 7500.0], [0.0, 0.0]]
    """
    library = np.asarray(block.sum(axis=1)).ravel()
    library[library == 0] = 1.0
    return sparse.csr_matrix(sparse.diags(TARGET_SUM / library) @ block)


def per_10k_of_log(block) -> sparse.csr_matrix:
    """Log-normalised values read back as values per 10,000: ``expm1``, then each row scaled to 10,000.

    ``log1p(normalize_total(x))`` at any library size (scanpy's default is the median
    library, not 10,000) comes back as the counts per 10,000 it was made from.

    Examples
    --------
    >>> import numpy as np
    >>> per_10k_of_log(np.log1p(np.array([[100.0, 300.0]]))).toarray().round(6).tolist()
    [[2500.0, 7500.0]]
    """
    block = sparse.csr_matrix(block, dtype=np.float64, copy=True)
    block.data = np.expm1(block.data)
    return per_10k(block)


def log_normalized_block(block, *, input_is_log: bool) -> sparse.csr_matrix:
    """``log1p`` of counts per 10,000 as float64 CSR; log-normalised input brought to that scale.

    Examples
    --------
    >>> import numpy as np
    >>> log_normalized_block(np.array([[1.0, 1.0]]), input_is_log=False).toarray().round(3).tolist()
    [[8.517, 8.517]]
    """
    block = per_10k_of_log(block) if input_is_log else per_10k(sparse.csr_matrix(block, dtype=np.float64))
    block.data = np.log1p(block.data)
    return block


def column_moments(matrix, transform) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance of ``transform(block)`` over row chunks, never densifying.

    ``transform`` maps a float64 CSR chunk to a sparse matrix of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = column_moments(np.array([[1, 0], [3, 2]]), lambda block: block * 2)
    >>> mean.tolist(), var.tolist()
    ([4.0, 2.0], [4.0, 4.0])
    """
    total, total_sq = np.zeros(matrix.shape[1]), np.zeros(matrix.shape[1])
    for block in _row_chunks(matrix):
        values = sparse.csr_matrix(transform(block.astype(np.float64)), dtype=np.float64)
        total += np.asarray(values.sum(axis=0)).ravel()
        total_sq += np.asarray(values.multiply(values).sum(axis=0)).ravel()
    n = max(matrix.shape[0], 1)
    mean = total / n
    return mean, np.maximum(total_sq / n - mean**2, 0.0)


def hvg_score(matrix, *, input_is_log: bool) -> np.ndarray:
    """Highly-variable-gene score: dispersion (variance / mean) of log-normalised values.

    Genes never expressed score 0.

    Examples
    --------
    >>> import numpy as np
    >>> s = hvg_score(np.array([[0, 5], [9, 5]]), input_is_log=False)
    >>> bool(s[0] > s[1])
    True
    """
    return dispersion(*log_normalized_moments(matrix, input_is_log=input_is_log))


def dispersion(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Variance over mean per gene; 0 where the mean is 0.

    Examples
    --------
    >>> import numpy as np
    >>> dispersion(np.array([2.0, 0.0]), np.array([1.0, 0.0])).tolist()
    [0.5, 0.0]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, var / mean, 0.0)


def inverse_std(var: np.ndarray, *, min_std: float = MIN_STD) -> np.ndarray:
    """Per-gene ``1 / std`` that standardises the model's values; 0 for genes that never vary.

    The standard deviation is floored at ``min_std`` so that a gene seen in a single cell
    does not get an unbounded weight (the values are also clipped where they are used).

    Examples
    --------
    >>> import numpy as np
    >>> inverse_std(np.array([4.0, 0.0, 1e-8])).tolist()
    [0.5, 0.0, 100.0]
    """
    std = np.sqrt(np.asarray(var, dtype=np.float64))
    return np.where(std > 0, 1.0 / np.maximum(std, min_std), 0.0)


def normalized_moments(matrix, *, input_is_log: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample variance (``ddof=1``) of counts per 10,000, never densifying.

    Log-normalised input is read back with ``expm1``, as Seurat's dispersion does, and
    brought to 10,000 per cell (:func:`per_10k_of_log`).

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = normalized_moments(np.array([[1, 1], [3, 1]]), input_is_log=False)
    >>> mean.round(1).tolist(), var.round(1).tolist()
    ([6250.0, 3750.0], [3125000.0, 3125000.0])
    """

    def normalized(block):
        return per_10k_of_log(block) if input_is_log else per_10k(block)

    mean, var = column_moments(matrix, normalized)
    n = matrix.shape[0]
    return mean, var * n / max(n - 1, 1)


def seurat_dispersion(mean: np.ndarray, var: np.ndarray, *, n_bins: int = 20) -> np.ndarray:
    """Seurat's normalised dispersion: log(var / mean) z-scored within 20 bins of log1p(mean).

    The score of ``scanpy.pp.highly_variable_genes(flavor="seurat")``, from the moments of
    :func:`normalized_moments`; NaN for genes that never vary, 1 for a gene alone in its bin.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = np.array([1.0, 1.0, 1.0, 0.0]), np.array([1.0, 2.0, 4.0, 0.0])
    >>> seurat_dispersion(mean, var, n_bins=1).round(2).tolist()
    [-1.0, 0.0, 1.0, nan]
    """
    import pandas as pd

    mean = np.where(mean == 0, 1e-12, mean)
    with np.errstate(divide="ignore"):
        log_dispersion = np.log(np.where(var == 0, np.nan, var / mean))
    frame = pd.DataFrame({"dispersion": log_dispersion, "bin": pd.cut(np.log1p(mean), bins=n_bins)})
    grouped = frame.groupby("bin", observed=False)["dispersion"]
    bin_mean = grouped.transform("mean").to_numpy()
    bin_std = grouped.transform(lambda x: x.std(ddof=1)).to_numpy()
    alone = np.isnan(bin_std)
    bin_mean, bin_std = np.where(alone, log_dispersion, bin_mean), np.where(alone, 1.0, bin_std)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (log_dispersion - bin_mean) / bin_std
    return np.where(alone & ~np.isnan(log_dispersion), 1.0, score)


def top_genes_mask(score: np.ndarray, n_top: int) -> np.ndarray:
    """Boolean mask of the ``n_top`` highest scores (NaN never chosen).

    Examples
    --------
    >>> import numpy as np
    >>> top_genes_mask(np.array([0.5, np.nan, 2.0, 1.0]), 2).tolist()
    [False, False, True, True]
    """
    score = np.where(np.isnan(score), -np.inf, score)
    n_top = min(int(n_top), int(np.isfinite(score).sum()))
    mask = np.zeros(score.size, dtype=bool)
    mask[np.argsort(-score, kind="stable")[:n_top]] = True
    return mask
