"""``scrobust.tl.marker_genes``: marker genes from the encoder's attention, scanpy style."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from scrobust_sc._constants import TARGET_SUM
from scrobust_sc.data._alignment import query_gene_names
from scrobust_sc.data._peaks import peak_names
from scrobust_sc.data._ranking import _row_chunks
from scrobust_sc.data._validation import check_whole_number
from scrobust_sc.model._attention import _group_codes, gene_attention

logger = logging.getLogger("scrobust_sc")

#: ``params["method"]`` of the marker results, next to scanpy's ``"wilcoxon"``, ``"t-test"``...
MARKER_METHOD = "scrobust_attention"


def _model_to_var_names(adata: ad.AnnData, model, gene_symbols: str | None = None) -> pd.Series:
    """``adata.var_names`` of each model gene that ``adata`` holds (model genes as index).

    Scanpy's plots look genes up in ``var_names``. Model genes are matched to them
    directly, or through the ``var`` column ``gene_symbols`` (default: the one the model
    was set up with).
    """
    model_genes = pd.Index(model.gene_names_)
    var_names = pd.Index(adata.var_names.astype(str))
    mapping = pd.Series(model_genes.where(model_genes.isin(var_names)), index=model_genes, dtype=object)
    symbols = gene_symbols
    if symbols is None and hasattr(model, "_setup_args"):
        symbols = model._setup_args.get("gene_symbols")
    if getattr(model, "modality", "rna") == "atac":  # peaks match by canonical name, whatever their spelling
        by_peak = pd.Series(var_names, index=peak_names(adata, symbols if symbols in adata.var.columns else None))
        mapping = by_peak[~by_peak.index.duplicated(keep="first")].reindex(model_genes)
    elif symbols is not None and symbols in adata.var.columns:
        by_symbol = pd.Series(var_names, index=adata.var[symbols].astype(str).to_numpy())
        by_symbol = by_symbol[~by_symbol.index.duplicated(keep="first")]
        unmatched = mapping.isna()
        mapping[unmatched] = by_symbol.reindex(model_genes[unmatched.to_numpy()]).to_numpy()
    mapping = mapping.dropna()
    if mapping.empty:
        raise ValueError(
            "None of the model's genes is among adata.var_names"
            + (f" or adata.var[{symbols!r}]" if symbols is not None else "")
            + f" (model genes e.g. {list(model_genes[:3])}, adata.var_names e.g. {list(var_names[:3])}). "
            "Scanpy's marker plots look genes up in var_names: use the same gene identifiers as the model, or "
            "name the var column that holds them with `gene_symbols=`."
        )
    return mapping


def _log_fold_changes(
    adata: ad.AnnData, model, model_var_names: np.ndarray, groups: pd.Series, top_names: np.ndarray
) -> np.ndarray:
    """log2 fold change of mean normalised expression, group vs rest, of each group's markers.

    Normalised as the model does: counts (or ``expm1`` of log-normalised input) scaled to
    ``TARGET_SUM`` over the model's genes, like scanpy's ``logfoldchanges``. For scATAC:
    the share of cells in which the peak is accessible.
    """
    layer = model._setup_args.get("layer")
    matrix = adata.layers[layer] if layer is not None and layer in adata.layers else adata.X
    markers = pd.unique(top_names.ravel())
    marker_cols = adata.var_names.get_indexer(markers)
    model_cols = adata.var_names.get_indexer(model_var_names)
    is_log = model._setup_args.get("is_log_normalized") and getattr(model, "modality", "rna") != "atac"
    blocks, libraries = [], []
    for block in _row_chunks(matrix):  # row chunks: a backed matrix is read, never densified whole
        if is_log:  # back to normalised values, whatever library size they were scaled to
            block = sparse.csr_matrix(block, dtype=np.float64, copy=True)
            block.data = np.expm1(block.data)
        blocks.append(sparse.csr_matrix(block[:, marker_cols], dtype=np.float64))
        libraries.append(np.asarray(block[:, model_cols].sum(axis=1)).ravel())
    values = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, markers.size))
    if getattr(model, "modality", "rna") == "atac":  # share of cells where the peak is accessible
        values.data = (values.data > 0).astype(np.float64)
    else:
        library = np.concatenate(libraries) if libraries else np.zeros(0)
        values = sparse.diags(TARGET_SUM / np.clip(library, 1e-8, None)) @ values
    codes, _ = _group_codes(groups, adata.n_obs)
    n_groups = int(codes.max()) + 1
    member = codes >= 0
    indicator = sparse.csr_matrix(
        (np.ones(int(member.sum())), (codes[member], np.flatnonzero(member))), shape=(n_groups, adata.n_obs)
    )
    group_sums = np.asarray((indicator @ values).todense())
    group_sizes = np.bincount(codes[member], minlength=n_groups).astype(np.float64)
    total = group_sums.sum(axis=0)
    mean_in = group_sums / group_sizes[:, None]
    rest = np.clip(member.sum() - group_sizes, 1, None)[:, None]
    mean_rest = (total[None, :] - group_sums) / rest
    lfc = np.log2((mean_in + 1e-9) / (mean_rest + 1e-9))
    position = {name: i for i, name in enumerate(markers)}
    cols = np.vectorize(position.__getitem__, otypes=[np.int64])(top_names)
    return np.take_along_axis(lfc, cols, axis=1)


def marker_genes(
    adata: ad.AnnData,
    model,
    *,
    groupby: str,
    n_genes: int | None = 10,
    key_added: str = "scrobust_markers",
    layer: int = -1,
    gene_selection: str = "unique",
    n_input_genes: int = 1000,
    batch_size: int = 256,
    gene_symbols: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Marker genes per group: the genes the CLS token attends to most.

    For each cell, the CLS query's attention of encoder ``layer`` over its input genes
    (averaged over heads; 0 for genes not in its input) is averaged over the cells of each
    group; the ``n_genes`` genes with the highest mean attention are the group's markers
    (the paper's "marker gene selection").

    Results go to ``adata.uns[key_added]`` in the structure of
    :func:`scanpy.tl.rank_genes_groups` (record arrays with one field per group, best
    first: ``names``, ``scores`` = mean attention, ``logfoldchanges`` = log2 fold change of
    the mean normalised expression in the group vs the rest, ``pvals`` and ``pvals_adj``
    = NaN since attention is not a test; ``params``), so that
    :func:`scanpy.pl.rank_genes_groups`, :func:`scanpy.pl.rank_genes_groups_heatmap`,
    ``_dotplot`` and ``_matrixplot`` draw them with ``key=key_added``. Gene names are
    ``adata.var_names`` (model genes are matched to them directly or through the ``var``
    column named at set-up); genes of the model that ``adata`` lacks are never markers.
    For the full groups x genes table of mean attention, call
    :func:`~scrobust_sc.tl.gene_attention` with ``groups=``.

    Parameters
    ----------
    adata
        Cells with their groups; genes are matched to the model's by name.
    model
        A trained :class:`~scrobust_sc.model.SCRobust` (fine-tuned models give the
        paper's markers).
    groupby
        ``obs`` column of the groups (e.g. cell types). Cells with a missing value are
        left out.
    n_genes
        Markers per group; ``None`` ranks every gene of the model. Scanpy's dot plots
        with ``values_to_plot="logfoldchanges"`` need every gene of ``adata`` ranked: for
        them, pass ``adata[:, model.gene_names_]`` when ``adata`` holds other genes too.
    key_added
        ``uns`` key of the results.
    layer
        Encoder layer whose attention is read (1-based, or negative from the end).
    gene_selection
        Each cell's input genes, as in
        :meth:`~scrobust_sc.model.SCRobust.get_latent_representation` (the paper: its
        highly unique genes, ``"unique"``).
    n_input_genes
        Genes per cell in the input.
    batch_size
        Cells per mini-batch.
    gene_symbols
        ``var`` column of ``adata`` whose names match the model's genes (e.g. symbols, with
        Ensembl IDs in ``var_names``); default: ``var_names``, or the column the model was set
        up with where ``adata`` has it. The markers are still named by ``var_names``. A
        backed ``adata`` is then read into memory.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``.

    Examples
    --------
    >>> import scanpy as sc, scrobust_sc as scrobust
    >>> adata = scrobust.data.pbmc_demo()
    >>> model = scrobust.tl.fit_annotator(adata, "cell_type")  # doctest: +SKIP
    >>> scrobust.tl.marker_genes(adata, model, groupby="cell_type")  # doctest: +SKIP
    >>> sc.pl.rank_genes_groups_heatmap(adata, key="scrobust_markers")  # doctest: +SKIP
    >>> scrobust.tl.marker_genes(ensembl_query, model, groupby="leiden", gene_symbols="gene_symbols")  # doctest: +SKIP
    """
    if groupby not in adata.obs.columns:
        raise ValueError(f"groupby={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    if n_genes is not None:
        check_whole_number(n_genes, "n_genes", 1)
    present = adata.obs[groupby].dropna().unique()
    if len(present) < 2:
        raise ValueError(
            f"marker_genes compares each group with the rest: groupby={groupby!r} needs at least 2 groups, "
            f"it holds {len(present)} ({[str(g) for g in present]})."
        )
    if gene_symbols is not None:
        query_gene_names(adata, gene_symbols)  # a column that is not there is refused by name
    mapping = _model_to_var_names(adata, model, gene_symbols)
    if getattr(model.module, "gene_linear", None) is not None:
        logger.info(
            "This model's classifier also reads the genes through a linear head; the attention markers show "
            "only what the Transformer attends to (weaker after brief fine-tuning than without the head)."
        )
    source = model.adata if adata is model.adata else adata
    if gene_symbols is not None and source is not model.adata:
        source = model.align_query(source, gene_symbols=gene_symbols)[0]
    attention = gene_attention(
        model,
        source,
        layer=layer,
        gene_selection=gene_selection,
        n_genes=n_input_genes,
        batch_size=batch_size,
        groups=adata.obs[groupby],
    )
    attention = attention.loc[:, mapping.index]
    n_top = attention.shape[1] if n_genes is None else min(n_genes, attention.shape[1])
    values = attention.to_numpy()
    # stable sort on the negated scores: ties keep the model's gene order
    order = np.argsort(-values, axis=1, kind="stable")[:, :n_top]
    top_scores = np.take_along_axis(values, order, axis=1)
    top_names = mapping.to_numpy()[order]
    lfc = _log_fold_changes(adata, model, mapping.to_numpy(), adata.obs[groupby], top_names)
    groups = [str(g) for g in attention.index]

    def records(values: np.ndarray, dtype: str) -> np.recarray:
        return pd.DataFrame(values.T, columns=groups).to_records(index=False, column_dtypes=dtype)

    no_test = np.full(top_scores.shape, np.nan)

    target = adata.copy() if copy else adata
    target.uns[key_added] = {
        "params": {
            "groupby": groupby,
            "reference": "rest",
            "method": MARKER_METHOD,
            "use_raw": False,
            "layer": None,
            "corr_method": None,
            "attention_layer": layer,
            "gene_selection": gene_selection,
            "n_input_genes": n_input_genes,
        },
        "names": records(top_names, "O"),
        "scores": records(top_scores, "float32"),
        "logfoldchanges": records(lfc, "float32"),
        "pvals": records(no_test, "float64"),
        "pvals_adj": records(no_test, "float64"),
    }
    logger.info("Attention markers of %d groups written to adata.uns[%r].", len(groups), key_added)
    return target if copy else None
