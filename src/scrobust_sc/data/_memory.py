"""Memory guards: refuse to densify beyond a budget, with a message that names the fix."""

from __future__ import annotations

import numpy as np
from scipy import sparse


class DenseBudgetError(ValueError, MemoryError):
    """An operation would build a dense array larger than ``scrobust_sc.settings.max_dense_bytes``."""


def _human(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024
    raise AssertionError  # pragma: no cover


def dense_nbytes(n_rows: int, n_cols: int, dtype=np.float32) -> int:
    """Bytes of a dense ``n_rows x n_cols`` array of ``dtype``.

    Examples
    --------
    >>> dense_nbytes(1000, 2000, "float32")
    8000000
    """
    return int(n_rows) * int(n_cols) * np.dtype(dtype).itemsize


def check_dense_budget(
    n_rows: int,
    n_cols: int,
    dtype=np.float32,
    *,
    what: str,
    fix: str,
    budget_bytes: int | None = None,
) -> int:
    """Raise :class:`DenseBudgetError` if a dense array would exceed the memory budget.

    Parameters
    ----------
    n_rows, n_cols, dtype
        Shape and type of the dense array the operation would create.
    what
        The operation, for the message (e.g. ``"a mini-batch of 4096 cells"``).
    fix
        What the user can do instead (e.g. ``"pass a smaller batch_size="``).
    budget_bytes
        Budget in bytes; default ``scrobust_sc.settings.max_dense_bytes`` (``None`` there:
        no limit).

    Returns
    -------
    The size in bytes.

    Examples
    --------
    >>> check_dense_budget(10, 10, what="a test", fix="none needed", budget_bytes=1024)
    400
    >>> check_dense_budget(100, 100, what="a test", fix="Use less.", budget_bytes=1024)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scrobust_sc.data._memory.DenseBudgetError: a test would need a dense 100 x 100 float32 array (39.1 KiB), above ...
    """
    if budget_bytes is None:
        from scrobust_sc._settings import settings

        budget_bytes = settings.max_dense_bytes
    size = dense_nbytes(n_rows, n_cols, dtype)
    if budget_bytes is not None and size > budget_bytes:
        raise DenseBudgetError(
            f"{what} would need a dense {int(n_rows):,} x {int(n_cols):,} {np.dtype(dtype)} array ({_human(size)}), "
            f"above the budget of {_human(budget_bytes)} (scrobust_sc.settings.max_dense_bytes). {fix} Or raise "
            f"the budget: `scrobust_sc.settings.max_dense_bytes = {size}` (None: no limit)."
        )
    return size


def matrix_in_memory(matrix, *, what: str = "reading the backed (on-disk) matrix"):
    """An in-memory version of a matrix of a backed AnnData (``read_h5ad(path, backed="r")``).

    A backed sparse matrix is read as a ``scipy.sparse`` matrix (it stays sparse); a
    backed dense matrix is read whole, after :func:`check_dense_budget`. Anything else is
    returned as it is.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((2, 3))
    >>> matrix_in_memory(x) is x
    True
    """
    if isinstance(matrix, np.ndarray) or sparse.issparse(matrix):
        return matrix
    if hasattr(matrix, "to_memory"):  # anndata's backed CSR/CSC dataset
        return matrix.to_memory()
    if hasattr(matrix, "shape") and hasattr(matrix, "dtype") and hasattr(matrix, "__getitem__"):  # h5py.Dataset
        n_rows, n_cols = matrix.shape
        check_dense_budget(
            n_rows,
            n_cols,
            matrix.dtype,
            what=what,
            fix="Store the counts sparse in the .h5ad file (`adata.X = scipy.sparse.csr_matrix(adata.X)` before "
            "writing), or read a subset of cells into memory (`adata[:100_000].to_memory()`).",
        )
        return matrix[()]
    return matrix
