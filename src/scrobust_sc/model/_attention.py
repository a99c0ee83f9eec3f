"""CLS attention over each cell's gene tokens, cell by cell or averaged per group."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse

from scrobust_sc._constants import GENE_SELECTIONS
from scrobust_sc.data._memory import check_dense_budget
from scrobust_sc.data._validation import check_whole_number


def _group_codes(groups, n_cells: int, obs_names: pd.Index | None = None) -> tuple[np.ndarray, pd.Index]:
    """Integer code per cell (``-1``: no group) and the group names, empty groups dropped.

    A :class:`pandas.Series` indexed by the cells' names (in any order) is aligned to
    ``obs_names``; any other sequence is read by position.
    """
    if len(groups) != n_cells:
        raise ValueError(f"groups has {len(groups)} entries for {n_cells} cells: give one label per cell.")
    if isinstance(groups, pd.Series) and obs_names is not None and not groups.index.equals(obs_names):
        if groups.index.is_unique and obs_names.is_unique and set(groups.index) == set(obs_names):
            groups = groups.reindex(obs_names)
        elif not isinstance(groups.index, pd.RangeIndex):
            raise ValueError(
                "groups is a Series whose index is not the cells' names: index it by obs_names, or pass its values."
            )
    values = groups.values if isinstance(groups, pd.Series) else groups
    categorical = values if isinstance(values, pd.Categorical) else pd.Categorical(values)
    codes = np.asarray(categorical.codes, dtype=np.int64)
    sizes = np.bincount(codes[codes >= 0], minlength=len(categorical.categories))
    kept = np.flatnonzero(sizes > 0)
    if kept.size == 0:
        raise ValueError("groups holds no label (all missing).")
    remap = np.full(len(categorical.categories), -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    codes = np.where(codes >= 0, remap[np.clip(codes, 0, None)], -1)
    return codes, pd.Index(categorical.categories[kept].astype(str))


@torch.inference_mode()
def gene_attention(
    model,
    adata: ad.AnnData | None = None,
    *,
    layer: int = -1,
    gene_selection: str = "unique",
    n_genes: int = 1000,
    batch_size: int = 256,
    groups: Sequence | pd.Series | np.ndarray | None = None,
) -> sparse.csr_matrix | pd.DataFrame:
    """Attention of the CLS token to each gene token of each cell.

    Each cell's input genes are chosen as for its embedding (``gene_selection``,
    ``n_genes``); the attention of the CLS query of encoder ``layer`` over the gene tokens
    is averaged over heads. A gene that was not in a cell's input gets 0. The result is
    built one mini-batch at a time, never as a dense cells x genes array.

    Parameters
    ----------
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    adata
        Cells to score (default: the model's AnnData); genes are matched by name.
    layer
        Encoder layer (1-based, or negative from the end; the paper uses the last).
    gene_selection
        Each cell's input genes: ``"unique"`` (highly unique genes, the paper),
        ``"mixed"``, ``"expressed"``, ``"hvg"`` or ``"random"``.
    n_genes
        Genes per cell.
    batch_size
        Cells per mini-batch.
    groups
        One label per cell (e.g. ``adata.obs["cell_type"]``; a Series indexed by the
        cells' names is aligned by name, anything else read by position). When given, the mean
        attention per group is returned instead of the per-cell matrix; cells with a
        missing label are left out and groups without cells are dropped.

    Returns
    -------
    Without ``groups``: a ``scipy.sparse.csr_matrix`` of shape cells x model genes
    (columns in the order of ``model.gene_names_``). With ``groups``: a
    :class:`pandas.DataFrame` groups x model genes of the mean attention per group.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> attention = scrobust.tl.gene_attention(model)  # doctest: +SKIP
    >>> attention.shape  # doctest: +SKIP
    (600, 5505)
    >>> per_type = scrobust.tl.gene_attention(model, groups=model.adata.obs["cell_type"])  # doctest: +SKIP
    >>> per_type.loc["CD19+ B"].nlargest(10)  # doctest: +SKIP
    """
    if gene_selection not in GENE_SELECTIONS:
        raise ValueError(f"gene_selection must be one of {GENE_SELECTIONS}, not {gene_selection!r}.")
    check_whole_number(n_genes, "n_genes", 1)
    module = model.module
    module.encoder._resolve_layer(layer)
    n_model_genes = len(model.gene_names_)
    cells = model.adata if adata is None else adata
    n_cells = cells.n_obs

    codes = group_names = sums = None
    if groups is not None:
        codes, group_names = _group_codes(groups, n_cells, cells.obs_names)
        dtype = torch.float32 if model.device.type == "mps" else torch.float64
        check_dense_budget(
            len(group_names),
            n_model_genes,
            np.float32 if dtype == torch.float32 else np.float64,
            what=f"The per-group attention sums ({len(group_names)} groups)",
            fix="Group the cells into fewer groups (`groups=` holds one label per cell, e.g. a cell-type column).",
        )
        sums = torch.zeros(len(group_names), n_model_genes, dtype=dtype, device=model.device)
        codes_t = torch.as_tensor(codes, device=model.device)
    blocks: list[sparse.csr_matrix] = []
    start = 0
    for tensors in model._batches(adata, None, batch_size):
        idx, vals, valid = module.select_genes(module._normalized(tensors), gene_selection, n_genes)
        _, attn = module.encoder(idx, vals, valid, layer=layer, return_attention=True)
        b = idx.shape[0]
        if groups is None:
            # boolean indexing walks the rows in order: exactly the CSR layout
            indptr = np.concatenate([[0], np.cumsum(valid.sum(dim=1).cpu().numpy())])
            indices = idx[valid].cpu().numpy().astype(np.int32)
            values = attn[valid].float().cpu().numpy()
            blocks.append(sparse.csr_matrix((values, indices, indptr), shape=(b, n_model_genes)))
        else:
            group = codes_t[start : start + b, None].expand_as(idx)
            keep = valid & (group >= 0)
            sums.index_put_((group[keep], idx[keep]), attn[keep].to(dtype), accumulate=True)
        start += b
    if start != n_cells:
        raise RuntimeError(f"Scored {start} cells, expected {n_cells}.")

    if groups is not None:
        sizes = np.bincount(codes[codes >= 0], minlength=len(group_names)).astype(np.float64)
        means = sums.cpu().numpy() / sizes[:, None]
        return pd.DataFrame(means.astype(np.float32), index=group_names, columns=pd.Index(model.gene_names_))
    if not blocks:
        return sparse.csr_matrix((n_cells, n_model_genes), dtype=np.float32)
    matrix = sparse.vstack(blocks, format="csr", dtype=np.float32)
    matrix.sort_indices()
    return matrix
