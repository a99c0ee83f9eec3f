"""Checks of the expression matrix a user registers: clear errors, never silent fixes."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import sparse

logger = logging.getLogger("scrobust_sc")

#: Largest value that log1p of counts per 10k can plausibly reach (log1p(1e4) = 9.21),
#: with room for log2 or other log bases used by some data portals.
MAX_LOG_VALUE = 30.0
#: Non-zero entries inspected to decide whether a matrix holds integer counts.
N_VALUES_CHECKED = 1_000_000


def _stored_values(matrix) -> np.ndarray:
    """The explicitly stored values (sparse) or all values (dense) as a flat array."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def sampled_nonzero_values(matrix, *, where: str) -> np.ndarray:
    """Up to :data:`N_VALUES_CHECKED` evenly spaced non-zero values; refuses a matrix without any.

    Examples
    --------
    >>> import numpy as np
    >>> sampled_nonzero_values(np.array([[0, 2], [3, 0]]), where="x").tolist()
    [2, 3]
    """
    values = _stored_values(matrix)
    values = values[values != 0]
    if values.size == 0:
        raise ValueError(f"{where} has no non-zero entry: there is nothing to learn from. Check `layer=`.")
    if values.size > N_VALUES_CHECKED:
        values = values[np.linspace(0, values.size - 1, N_VALUES_CHECKED).astype(np.int64)]
    return values


def sampled_rows(matrix, n_values: int = N_VALUES_CHECKED):
    """Evenly spaced rows of ``matrix`` holding about ``n_values`` stored values (all rows if fewer).

    A cheap sample for checking the scale of a large matrix again, e.g. on every call.

    Examples
    --------
    >>> import numpy as np
    >>> sampled_rows(np.arange(12).reshape(6, 2), n_values=6).tolist()
    [[0, 1], [4, 5], [10, 11]]
    """
    stored = matrix.nnz if sparse.issparse(matrix) else int(np.prod(matrix.shape))
    if stored <= n_values:
        return matrix
    if sparse.issparse(matrix) and matrix.format not in ("csr", "csc"):
        matrix = matrix.tocsr()
    n_rows = matrix.shape[0]
    rows = np.unique(np.linspace(0, n_rows - 1, max(1, n_rows * n_values // stored)).astype(np.int64))
    return matrix[rows]


def check_finite_nonnegative(matrix, *, where: str = "the expression matrix") -> None:
    """Raise ``ValueError`` for NaN, infinite or negative values.

    Examples
    --------
    >>> import numpy as np
    >>> check_finite_nonnegative(np.array([[0.0, 1.0]]))
    """
    values = _stored_values(matrix)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"{where} has dtype {values.dtype}; pass a numeric matrix of counts.")
    if np.issubdtype(values.dtype, np.floating):
        n_bad = int((~np.isfinite(values)).sum())
        if n_bad:
            raise ValueError(
                f"{where} contains {n_bad} NaN or infinite values. Fix or remove them first, e.g. "
                "drop the cells that hold them: `adata = adata[np.isfinite(np.asarray(adata.X.sum(axis=1))).ravel()]"
                ".copy()` (with `adata.layers[...]` in place of `adata.X` when the counts are in a layer), or "
                "replace them with 0."
            )
    n_neg = int((values < 0).sum())
    if n_neg:
        raise ValueError(
            f"{where} contains {n_neg} negative values: scRobust needs raw counts or log-normalised "
            "values (>= 0). Scaled or z-scored data (e.g. after `sc.pp.scale`) cannot be used; pass the "
            "raw counts with `layer=`."
        )


def detect_input_kind(matrix, *, is_log_normalized: bool | None = None, where: str = "the expression matrix") -> bool:
    """Decide whether a matrix holds raw counts (``False``) or log-normalised values (``True``).

    Parameters
    ----------
    matrix
        Cells x genes, dense or sparse, already checked by :func:`check_finite_nonnegative`.
    is_log_normalized
        What the user says the data are; ``None`` detects it. A claim that contradicts the
        data is an error.
    where
        Name of the matrix in messages.

    Returns
    -------
    ``True`` for log-normalised input, ``False`` for counts.

    Examples
    --------
    >>> import numpy as np
    >>> detect_input_kind(np.array([[0, 3], [1, 0]]))
    False
    >>> detect_input_kind(np.log1p(np.array([[0.0, 3.5], [1.2, 0.0]])))
    True
    """
    values = sampled_nonzero_values(matrix, where=where)
    integer = bool(np.all(np.equal(np.mod(values, 1), 0)))
    vmax = float(values.max())
    if is_log_normalized is None:
        if integer:
            return False
        if vmax <= MAX_LOG_VALUE:
            logger.info("%s holds non-integer values up to %.2f: treated as log-normalised.", where, vmax)
            return True
        raise ValueError(
            f"{where} holds non-integer values up to {vmax:.1f}: neither raw counts nor log-normalised "
            "data. Pass raw counts (e.g. `layer='counts'`) or log1p of normalised counts "
            "(`sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata)`)."
        )
    if is_log_normalized:
        if vmax > MAX_LOG_VALUE:
            raise ValueError(
                f"is_log_normalized=True but {where} reaches {vmax:.1f}, too large for log-normalised data: "
                "these look like counts. Drop is_log_normalized or apply `sc.pp.log1p` first."
            )
        return True
    if not integer:
        raise ValueError(
            f"{where} was declared as raw counts but holds non-integer values (max {vmax:.2f}). Pass the raw "
            "counts (`layer=`), or set `is_log_normalized=True` if these are log-normalised values."
        )
    return False


def check_gene_names(
    names: pd.Index, *, where: str = "adata.var_names", peaks: bool = False, column: str | None = None
) -> None:
    """Raise ``ValueError`` for duplicated or missing gene (or, with ``peaks``, peak) names.

    ``column``: the names come from ``adata.var[column]`` (``gene_symbols=``), which the
    message then names, with a fix for that column.

    Examples
    --------
    >>> import pandas as pd
    >>> check_gene_names(pd.Index(["CD3E", "MS4A1"]))
    """
    if column is not None:
        where = f"adata.var[{column!r}]"
    if names.isna().any():
        raise ValueError(f"{where} contains missing gene names. Give every gene a name.")
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        shown = ", ".join(map(str, duplicated[:5]))
        if peaks:
            fix = (
                "sum the duplicates' counts, or keep one of each (`adata = adata[:, ~adata.var_names.duplicated()]"
                ".copy()`; renaming them would break their chr:start-end names)"
            )
        elif column is not None:
            fix = (
                f"make the column unique (`adata.var[{column!r}] = ad.utils.make_index_unique("
                f"pd.Index(adata.var[{column!r}].astype(str)))`, with `import anndata as ad, pandas as pd`) "
                "or aggregate the duplicates first"
            )
        else:
            fix = "call `adata.var_names_make_unique()` or aggregate the duplicates first"
        what = "duplicated peaks" if peaks else "duplicated gene names"
        raise ValueError(
            f"{where} contains {len(duplicated)} {what} ({shown}...). They are tokens and must be unique: {fix}."
        )


def check_whole_number(value, name: str, minimum: int) -> None:
    """Refuse ``value`` unless it is a whole number of at least ``minimum``, naming the argument.

    Examples
    --------
    >>> check_whole_number(64, "batch_size", 2)
    >>> check_whole_number(0, "batch_size", 2)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a whole number of at least 2, not 0.
    """
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not whole or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not {value!r}.")
