"""Peak names of scATAC-seq data: ``chr:start-end``, ``chr-start-end``, ``chr_start_end`` or ``var`` columns."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd

#: ``chrom`` (may itself hold ``_`` or ``-``, e.g. ``chr1_KI270706v1_random``), a separator,
#: ``start``, a separator, ``end``. The chromosome is matched greedily: the last two numbers are the coordinates.
_PEAK = re.compile(r"^(?P<chrom>.+)[:_-](?P<start>\d+)[-_](?P<end>\d+)$")
#: ``var`` column names accepted for the coordinates, in order of preference.
CHROM_COLUMNS = ("chrom", "chr", "seqnames", "chromosome")
START_COLUMNS = ("start", "chromStart")
END_COLUMNS = ("end", "chromEnd")


def parse_peak_names(names) -> pd.DataFrame:
    """Split peak names into ``chrom``, ``start`` and ``end``.

    Accepts ``chr1:100-600``, ``chr1-100-600`` and ``chr1_100_600`` (mixed forms too).

    Parameters
    ----------
    names
        Peak names.

    Returns
    -------
    DataFrame with columns ``chrom`` (str), ``start`` and ``end`` (int64), one row per name.

    Raises
    ------
    ValueError
        When a name does not parse or has ``start > end``; the message shows examples.

    Examples
    --------
    >>> parse_peak_names(["chr1:100-600", "chr2-5-10", "chrX_7_9"]).values.tolist()
    [['chr1', 100, 600], ['chr2', 5, 10], ['chrX', 7, 9]]
    """
    names = pd.Index([str(n) for n in names])
    parts = names.str.extract(_PEAK)
    bad = parts["chrom"].isna().to_numpy()
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(names)} peak names are not of the form chr:start-end, chr-start-end or "
            f"chr_start_end (e.g. {list(names[bad][:3])}). Put the peak names in `adata.var_names`, or give "
            "`adata.var` the columns 'chrom', 'start' and 'end'."
        )
    out = pd.DataFrame(
        {
            "chrom": parts["chrom"].astype(str).to_numpy(),
            "start": parts["start"].astype(np.int64).to_numpy(),
            "end": parts["end"].astype(np.int64).to_numpy(),
        },
        index=names,
    )
    _check_coordinates(out)
    return out


def _whole_positions(values: pd.Series, column: str) -> np.ndarray:
    """A ``var`` column of peak positions as integers (text such as ``"900"`` included), or a clear error."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    wrong = ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if wrong.any():
        raise ValueError(
            f"adata.var[{column!r}] holds {int(wrong.sum())} positions that are not whole numbers "
            f"(e.g. {list(values[wrong][:3])}): peak positions are base pairs."
        )
    return numbers.astype(np.int64)


def _check_coordinates(coords: pd.DataFrame) -> None:
    wrong = coords["start"].to_numpy() > coords["end"].to_numpy()
    if wrong.any():
        raise ValueError(f"{int(wrong.sum())} peaks have start > end (e.g. {list(coords.index[wrong][:3])}).")


def format_peak_names(chrom, start, end) -> pd.Index:
    """Canonical peak names ``chrom:start-end``.

    Examples
    --------
    >>> list(format_peak_names(["chr1"], [100], [600]))
    ['chr1:100-600']
    """
    chrom = pd.Series(np.asarray(chrom)).astype(str)
    start = pd.Series(np.asarray(start)).astype(np.int64).astype(str)
    end = pd.Series(np.asarray(end)).astype(np.int64).astype(str)
    return pd.Index((chrom + ":" + start + "-" + end).to_numpy(), dtype=str)


def _column(var: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in var.columns), None)


def peak_names(adata: ad.AnnData, gene_symbols: str | None = None) -> pd.Index:
    """Canonical ``chrom:start-end`` names of the peaks of ``adata``.

    Taken from ``var_names`` (or the ``var`` column ``gene_symbols``) when they are
    peak-like in any of the three forms; otherwise built from the ``var`` columns
    ``chrom``/``start``/``end`` (also ``chr``, ``seqnames``; ``chromStart``, ``chromEnd``).
    Canonical names let a query whose peaks are spelled ``chr1-100-600`` match a model
    trained on ``chr1:100-600``.

    Parameters
    ----------
    adata
        Cells x peaks.
    gene_symbols
        ``var`` column holding the peak names; default ``var_names``.

    Returns
    -------
    One name per peak, in ``adata``'s order.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> var = pd.DataFrame({"chrom": ["chr1"], "start": [10], "end": [20]}, index=["peak1"])
    >>> list(peak_names(ad.AnnData(np.ones((1, 1)), var=var)))
    ['chr1:10-20']
    """
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            raise ValueError(
                f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(adata.var.columns)})."
            )
        names = pd.Index(adata.var[gene_symbols].astype(str))
    else:
        names = pd.Index(adata.var_names.astype(str))
    try:
        coords = parse_peak_names(names)
    except ValueError as err:
        columns = [_column(adata.var, c) for c in (CHROM_COLUMNS, START_COLUMNS, END_COLUMNS)]
        if gene_symbols is not None or None in columns:
            raise ValueError(f"Cannot name the peaks: {err}") from None
        chrom, start, end = (adata.var[c] for c in columns)
        if start.isna().any() or end.isna().any() or chrom.isna().any():
            raise ValueError(
                f"adata.var columns {columns} hold missing values: every peak needs coordinates."
            ) from None
        start, end = _whole_positions(start, columns[1]), _whole_positions(end, columns[2])
        coords = pd.DataFrame({"chrom": chrom.astype(str).to_numpy(), "start": start, "end": end})
        coords.index = format_peak_names(coords["chrom"], coords["start"], coords["end"])
        _check_coordinates(coords)
    return format_peak_names(coords["chrom"], coords["start"], coords["end"])
