"""Package-wide settings: ``scrobust_sc.settings``."""

from __future__ import annotations

import math
import numbers

#: Default largest dense array (bytes) an operation may create from the user's data: 4 GiB.
DEFAULT_MAX_DENSE_BYTES = 4 * 1024**3


class ScrobustSettings:
    """Settings of scrobust-sc, read when an operation runs.

    Attributes
    ----------
    max_dense_bytes
        Largest dense array, in bytes, that an operation may build from the user's data
        (a mini-batch, a reordered dense query, a backed dense matrix read into memory,
        per-group attention sums, a marker plot). Above it a
        :class:`~scrobust_sc.data.DenseBudgetError` names the operation, the size and the
        fix, instead of the process running out of memory. ``None`` removes the limit.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> scrobust.settings.max_dense_bytes = 8 * 1024**3  # 8 GiB
    >>> scrobust.settings.max_dense_bytes = None  # no limit
    >>> scrobust.settings.reset()
    """

    def __init__(self) -> None:
        self._max_dense_bytes: int | None = DEFAULT_MAX_DENSE_BYTES

    @property
    def max_dense_bytes(self) -> int | None:
        """Largest dense array in bytes (``None``: no limit)."""
        return self._max_dense_bytes

    @max_dense_bytes.setter
    def max_dense_bytes(self, value: int | None) -> None:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value) and int(value) == value and value > 0):
            raise ValueError(f"max_dense_bytes must be a positive integer or None, not {value!r}.")
        self._max_dense_bytes = None if value is None else int(value)

    def reset(self) -> None:
        """Restore the defaults."""
        self.__init__()

    def __repr__(self) -> str:
        return f"ScrobustSettings(max_dense_bytes={self.max_dense_bytes})"


settings = ScrobustSettings()
