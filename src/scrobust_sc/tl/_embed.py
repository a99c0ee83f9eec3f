"""``scrobust.tl.embed``: cell embeddings into ``obsm``, scanpy style."""

from __future__ import annotations

import anndata as ad

from scrobust_sc._constants import EMBEDDING_KEY

from ._annotate import check_copy_of_backed


def embed(
    adata: ad.AnnData,
    model,
    *,
    key_added: str = EMBEDDING_KEY,
    layer: int = -1,
    gene_selection: str = "unique",
    n_genes: int = 1000,
    batch_size: int = 256,
    gene_symbols: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Write scRobust cell embeddings to ``adata.obsm[key_added]``.

    Parameters
    ----------
    adata
        Cells to embed; genes are matched to the model's by name.
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    key_added
        ``obsm`` key of the embedding; parameters go to ``uns["scrobust"]["embed"]``.
    layer, gene_selection, n_genes, batch_size
        See :meth:`~scrobust_sc.model.SCRobust.get_latent_representation`.
    gene_symbols
        ``var`` column of ``adata`` whose names match the model's genes (e.g. symbols, with
        Ensembl IDs in ``var_names``); default: ``var_names``, or the column the model was set
        up with where ``adata`` has it. A backed ``adata`` is then read into memory.
    copy
        Return a modified copy instead of writing into ``adata`` (not for a backed ``adata``).

    Returns
    -------
    ``None``, or the copy when ``copy=True``.

    Examples
    --------
    >>> import scanpy as sc, scrobust_sc as scrobust
    >>> scrobust.tl.embed(adata, model)  # doctest: +SKIP
    >>> scrobust.tl.embed(ensembl_query, model, gene_symbols="gene_symbols")  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_scrobust")  # doctest: +SKIP
    """
    check_copy_of_backed(adata, copy)
    target = adata.copy() if copy else adata
    source = model.adata if adata is model.adata else adata
    if gene_symbols is not None and source is not model.adata:
        source = model.align_query(source, gene_symbols=gene_symbols)[0]
    z = model.get_latent_representation(
        source, layer=layer, gene_selection=gene_selection, n_genes=n_genes, batch_size=batch_size
    )
    target.obsm[key_added] = z
    params = {
        "key_added": key_added,
        "layer": layer,
        "gene_selection": gene_selection,
        "n_genes": n_genes,
        "gene_symbols": gene_symbols,
    }
    report = getattr(model, "last_alignment_", None)  # the report of `source`, which the model just read
    entry = {"params": params}
    if report is not None and adata is not model.adata:
        entry["gene_alignment"] = dict(report)
    target.uns.setdefault("scrobust", {})["embed"] = entry
    return target if copy else None
