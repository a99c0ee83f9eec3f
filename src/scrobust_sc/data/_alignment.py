"""Aligning a query AnnData to a model's genes by name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from scrobust_sc._constants import MISSING_AS_TEXT

from ._memory import check_dense_budget, matrix_in_memory
from ._validation import check_gene_names

logger = logging.getLogger("scrobust_sc")

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")
#: An Ensembl ID's version suffix (``ENSG00000141510.17``).
_VERSION_SUFFIX = r"(?<=\d)[.]\d+$"

#: Below this share of the model's genes found in a query, alignment is refused.
MIN_GENE_OVERLAP = 0.01
#: Where a ``var`` column of gene names is given (the functions that take ``gene_symbols=``).
GENE_SYMBOLS_FIX = (
    "`gene_symbols='<column>'` for a query in `scrobust.tl.annotate`, `tl.embed`, `tl.marker_genes` or "
    "`model.align_query(query, gene_symbols=...)` (whose result the model's methods read), for training data in "
    "`SCRobust.setup_anndata` (command line: `--gene-symbols <column>`); or set `adata.var_names` from that column"
)


def missing_layer_error(layer: str, layers) -> ValueError:
    """The error for a query without ``layers[layer]``, where a model reads its counts.

    Examples
    --------
    >>> "layer='X'" in str(missing_layer_error("counts", []))
    True
    """
    return ValueError(
        f"This model reads its counts from layers[{layer!r}], which the query lacks (layers: {list(layers)}). "
        "`scrobust.tl.annotate(adata, model=model, layer='X')` reads them from adata.X (command line: `predict` "
        "or `annotate --layer X`), or from another layer named by `layer=`; otherwise (`tl.embed`, the model's "
        f"methods, `reference=`) put them in that layer first: `adata.layers[{layer!r}] = adata.X`."
    )


@dataclass
class GeneAlignment:
    """What matching a query's genes to a model's vocabulary found."""

    n_model_genes: int
    n_found: int
    missing: list[str]

    @property
    def share_missing(self) -> float:
        """Share of the model's genes absent from the query."""
        return 1.0 - self.n_found / max(self.n_model_genes, 1)

    def as_dict(self) -> dict:
        """A JSON- and ``uns``-friendly summary."""
        return {
            "n_model_genes": self.n_model_genes,
            "n_genes_found": self.n_found,
            "n_genes_missing": self.n_model_genes - self.n_found,
            "share_missing": round(self.share_missing, 6),
        }


def looks_like_ensembl(names) -> bool:
    """Whether most names look like Ensembl gene IDs (``ENSG...``, ``ENSMUSG...``).

    Examples
    --------
    >>> looks_like_ensembl(["ENSG00000141510", "ENSG00000012048"])
    True
    """
    names = [str(n) for n in list(names)[:200]]
    return bool(names) and sum(bool(_ENSEMBL.match(n)) for n in names) > len(names) / 2


#: Gene names that stand for a missing one: empty, or a missing value turned into text.
MISSING_NAMES = ("", *MISSING_AS_TEXT)


def query_gene_names(adata: ad.AnnData, gene_symbols: str | None) -> pd.Index:
    """The gene names of ``adata``: ``var_names`` or the ``var`` column ``gene_symbols``.

    Missing names (NaN, or text such as ``"nan"``, ``"None"`` or ``""``) come back as NaN,
    which :func:`~scrobust_sc.data.check_gene_names` refuses.
    """
    if gene_symbols is None:
        raw = pd.Index(adata.var_names)
    elif gene_symbols not in adata.var.columns:
        raise ValueError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(adata.var.columns)})."
        )
    else:
        raw = pd.Index(adata.var[gene_symbols])
    names = pd.Index(raw.astype(str))
    missing = np.asarray(raw.isna()) | np.asarray(names.str.strip().isin(MISSING_NAMES))
    return names.where(~missing, np.nan) if missing.any() else names


def match_genes(
    query_names: pd.Index,
    model_genes: pd.Index,
    *,
    min_overlap: float = MIN_GENE_OVERLAP,
    features: str = "genes",
    column: str | None = None,
):
    """Position of each model gene in the query (``-1`` when missing) and a report.

    ``features="peaks"`` words the no-overlap error for scATAC peaks; ``column`` is the
    ``var`` column the query's names come from, if any (named in errors).

    Examples
    --------
    >>> import pandas as pd
    >>> pos, rep = match_genes(pd.Index(["b", "a"]), pd.Index(["a", "b", "c"]))
    >>> pos.tolist(), rep.n_found
    ([1, 0, -1], 2)
    """
    check_gene_names(query_names, where="the query's gene names", column=column)
    position = query_names.get_indexer(model_genes)
    found = position >= 0
    report = GeneAlignment(len(model_genes), int(found.sum()), list(model_genes[~found]))
    too_few = report.n_found == 0 or report.n_found < min_overlap * len(model_genes)
    if too_few and features == "peaks":
        raise ValueError(
            f"Only {report.n_found} of the model's {len(model_genes)} peaks are in the query (e.g. model peaks "
            f"{list(model_genes[:3])}, query peaks {list(query_names[:3])}): peaks are matched by their exact "
            "coordinates (chrom:start-end). Count the query's fragments in the model's peak set (the reference's "
            "peaks) so that both share them."
        )
    if too_few:
        hint = _version_suffix_hint(query_names, model_genes)
        if not hint and looks_like_ensembl(query_names) != looks_like_ensembl(model_genes):
            hint = " The query's genes look like Ensembl IDs and the model's do not (or the reverse)."
        raise ValueError(
            f"Only {report.n_found} of the model's {len(model_genes)} genes are in the query "
            f"(e.g. model genes {list(model_genes[:3])}, query genes {list(query_names[:3])}).{hint} If the "
            f"names that match are in a column of `var`, name it: {GENE_SYMBOLS_FIX}; mouse and human symbols "
            "differ in case."
        )
    return position, report


def _version_suffix_hint(query_names: pd.Index, model_genes: pd.Index) -> str:
    """A fix when the names match once Ensembl version suffixes (``ENSG....7``) are dropped; else ``""``."""
    query, model = pd.Index(query_names.astype(str)), pd.Index(model_genes.astype(str))
    bare_query, bare_model = (
        query.str.replace(_VERSION_SUFFIX, "", regex=True),
        model.str.replace(_VERSION_SUFFIX, "", regex=True),
    )
    if bare_model.isin(bare_query).sum() <= len(model) / 2:  # stripped names need not be unique
        return ""
    if not bare_query.equals(query):
        return (
            " The query's Ensembl IDs carry a version suffix (e.g. '.7') that the model's do not: strip it "
            "(`adata.var_names = adata.var_names.str.replace(r'[.][0-9]+$', '', regex=True)`)."
        )
    return (
        " The model's Ensembl IDs carry a version suffix (e.g. '.7') that the query's do not: give the query "
        "the same versioned IDs, or train the model on unversioned ones."
    )


def reindex_matrix(matrix, position: np.ndarray):
    """Columns of ``matrix`` reordered to ``position``; missing genes (``-1``) become zeros.

    Sparse input stays sparse; nothing is densified.

    Examples
    --------
    >>> import numpy as np
    >>> reindex_matrix(np.array([[1, 2]]), np.array([1, -1, 0])).tolist()
    [[2, 0, 1]]
    """
    n_query, n_model = matrix.shape[1], len(position)
    found = np.flatnonzero(position >= 0)
    if sparse.issparse(matrix):
        selector = sparse.csr_matrix(
            (np.ones(found.size, dtype=matrix.dtype), (position[found], found)), shape=(n_query, n_model)
        )
        return sparse.csr_matrix(matrix) @ selector
    check_dense_budget(
        matrix.shape[0],
        n_model,
        matrix.dtype,
        what="Reordering a dense query matrix to the model's genes",
        fix="Store the query sparse (`adata.X = scipy.sparse.csr_matrix(adata.X)`): sparse input stays sparse.",
    )
    matrix = np.asarray(matrix)  # its own dtype kept (float16 included, which scipy.sparse lacks)
    reordered = np.zeros((matrix.shape[0], n_model), dtype=matrix.dtype)
    reordered[:, found] = matrix[:, position[found]]
    return reordered


def align_to_genes(
    adata: ad.AnnData,
    model_genes: pd.Index,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    names: pd.Index | None = None,
) -> tuple[ad.AnnData, GeneAlignment]:
    """A new AnnData holding ``adata``'s cells over the model's genes, in the model's order.

    The user's AnnData is never modified. The matrix is shared when no reordering is
    needed; otherwise a reordered sparse copy is made. A backed AnnData
    (``read_h5ad(path, backed="r")``) has its matrix read into memory: sparse stays sparse,
    dense is checked against ``scrobust_sc.settings.max_dense_bytes``.

    Parameters
    ----------
    adata
        Query cells.
    model_genes
        The model's gene vocabulary, in order.
    layer
        Where the counts are (``None``: ``X``); the result keeps them at the same place.
    gene_symbols
        ``var`` column holding names that match the model's genes.
    names
        The query's peak names, one per ``var`` row, given directly (canonical names from
        :func:`~scrobust_sc.data.peak_names`); overrides ``gene_symbols``, and a query
        without enough shared features is then told about peaks, not genes.

    Returns
    -------
    The aligned AnnData and a :class:`GeneAlignment` report.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> q = ad.AnnData(np.array([[1.0, 2.0]]), var=pd.DataFrame(index=["b", "a"]))
    >>> aligned, rep = align_to_genes(q, pd.Index(["a", "b", "c"]))
    >>> aligned.X.tolist(), rep.share_missing
    ([[2.0, 1.0, 0.0]], 0.33333333333333337)
    """
    if adata.n_obs == 0:
        raise ValueError(f"The query AnnData has no cells ({adata.n_obs} cells x {adata.n_vars} genes).")
    features = "genes" if names is None else "peaks"  # names are given for peaks (canonical peak names)
    names = query_gene_names(adata, gene_symbols) if names is None else pd.Index(names)
    position, report = match_genes(
        names, model_genes, features=features, column=gene_symbols if features == "genes" else None
    )
    matrix = adata.X if layer is None else _layer(adata, layer)
    if matrix is None:
        raise ValueError(
            "adata.X is empty: the model reads the counts from X, or from the layer it was set up with. "
            "Annotate from a layer with `scrobust.tl.annotate(adata, model=model, layer='<layer>')`, or put the "
            "counts in X (`adata.X = adata.layers['<layer>']`) before calling the model's methods."
        )
    if adata.isbacked:  # read from disk once; a sparse matrix stays sparse, a dense one is checked against the budget
        matrix = matrix_in_memory(matrix, what="Reading the backed (on-disk) dense query matrix into memory")
    if not np.array_equal(position, np.arange(len(model_genes))) or len(names) != len(model_genes):
        matrix = reindex_matrix(matrix, position)
        if report.n_found < len(model_genes):
            logger.info(
                "%d of the model's %d genes (%.1f%%) are missing from the query; they count as not expressed.",
                len(model_genes) - report.n_found,
                len(model_genes),
                100 * report.share_missing,
            )
    obs = pd.DataFrame(index=adata.obs_names.copy())
    var = pd.DataFrame(index=pd.Index(model_genes, dtype=str))
    if layer is None:
        aligned = ad.AnnData(X=matrix, obs=obs, var=var)
    else:
        aligned = ad.AnnData(X=None, obs=obs, var=var, layers={layer: matrix})
    return aligned, report


def _layer(adata: ad.AnnData, layer: str):
    if layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    return adata.layers[layer]
