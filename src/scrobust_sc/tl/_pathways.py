"""Pathway vectors and annotation without labels (the paper's "pathway embedding vector").

A pathway vector is the CLS output of the encoder for the pathway's genes, each token
with value 1.0. A pathway-informed cell vector is the CLS output for the same genes
carrying the cell's log-normalised values (zeros included: a zero-valued token still
sits in the sequence). A cell is annotated with the pathway its pathway-informed vector
is closest to, by ``closeness(a, b) = a.b / b.b``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike

import anndata as ad
import numpy as np
import torch

from scrobust_sc._constants import UNKNOWN_LABEL
from scrobust_sc.data._gmt import read_gmt

from ._labels import write_label_column

logger = logging.getLogger("scrobust_sc")

GeneSets = Mapping[str, Sequence[str]] | str | PathLike
_N_SHOWN = 10


def closeness(a, b):
    """Closeness of ``a`` to ``b``: ``a.b / b.b = |a| cos(theta) / |b|``, row-wise.

    Both direction and length count: 1 means ``a`` projects onto ``b`` with ``b``'s
    length. The last axis holds the vector; the other axes broadcast (e.g. cells x
    pathways x d against pathways x d gives cells x pathways).

    Parameters
    ----------
    a
        ``(..., d)`` array or tensor.
    b
        ``(..., d)`` array or tensor (non-zero vectors), broadcastable with ``a``.

    Returns
    -------
    ``(...)`` closeness, a tensor when either input is one, else a numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> closeness(np.array([[2.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    array([2. , 0.5])
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a = torch.as_tensor(a)
        b = torch.as_tensor(b, device=a.device)
    else:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return (a * b).sum(-1) / (b * b).sum(-1)


def _as_gene_sets(gene_sets: GeneSets) -> dict[str, list[str]]:
    if isinstance(gene_sets, str | PathLike):
        gene_sets = read_gmt(gene_sets)
    if not isinstance(gene_sets, Mapping):
        raise TypeError(f"gene_sets must be a mapping name -> genes or a GMT path, not {type(gene_sets).__name__}.")
    if not gene_sets:
        raise ValueError("gene_sets is empty.")
    out = {}
    for name, genes in gene_sets.items():
        if isinstance(genes, str):
            raise TypeError(f"gene set {name!r}: give a list of genes, not one string.")
        out[str(name)] = [str(g) for g in genes]
    return out


def match_gene_sets(gene_names: Sequence[str], gene_sets: GeneSets) -> dict[str, np.ndarray]:
    """Positions of each gene set's genes in a vocabulary, matched case-insensitively.

    An exact match is preferred; otherwise the names are compared upper-cased (so the
    mouse ``Gcg`` matches the human ``GCG``; orthologues with other names, like ``Ins1``
    and ``INS``, do not). Genes absent from the vocabulary are reported through the
    ``scrobust_sc`` logger.

    Parameters
    ----------
    gene_names
        The vocabulary (e.g. ``model.gene_names_``).
    gene_sets
        Set name -> genes, or the path of a GMT file.

    Returns
    -------
    Set name -> positions in ``gene_names`` (each gene once, in the set's order).

    Raises
    ------
    ValueError
        When a set has no gene in the vocabulary (the message names it).

    Examples
    --------
    >>> match_gene_sets(["INS", "GCG", "SST"], {"alpha": ["Gcg", "Arx"], "beta": ["INS"]})
    {'alpha': array([1]), 'beta': array([0])}
    """
    gene_sets = _as_gene_sets(gene_sets)
    exact = {g: i for i, g in reversed(list(enumerate(gene_names)))}
    upper = {g.upper(): i for i, g in reversed(list(enumerate(gene_names)))}
    matched: dict[str, np.ndarray] = {}
    for name, genes in gene_sets.items():
        positions, missing = [], []
        for gene in genes:
            pos = exact.get(gene, upper.get(gene.upper()))
            (missing if pos is None else positions).append(gene if pos is None else pos)
        positions = list(dict.fromkeys(positions))
        if not positions:
            raise ValueError(
                f"gene set {name!r}: none of its {len(genes)} genes (e.g. {genes[:_N_SHOWN]}) is in the model's "
                f"vocabulary of {len(gene_names)} genes (e.g. {list(gene_names[:3])}). Check the species and the "
                "gene identifiers (symbols vs Ensembl IDs)."
            )
        if missing:
            shown = ", ".join(missing[:_N_SHOWN]) + (", ..." if len(missing) > _N_SHOWN else "")
            logger.info(
                "gene set %r: %d of %d genes are not in the model's vocabulary: %s",
                name,
                len(missing),
                len(genes),
                shown,
            )
        matched[name] = np.asarray(positions, dtype=np.int64)
    return matched


@torch.inference_mode()
def pathway_vectors(model, gene_sets: GeneSets, *, layer: int = -1) -> np.ndarray:
    """Pathway vectors: the CLS output for each set's genes, every token with value 1.0.

    Parameters
    ----------
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    gene_sets
        Set name -> genes, or the path of a GMT file. Genes are matched to the model's
        vocabulary case-insensitively; missing genes are logged.
    layer
        Encoder layer (1-based, or negative from the end), as for the cell embeddings.

    Returns
    -------
    ``(n_sets, d_model)`` float32 array, rows in the order of ``gene_sets``; in the space of
    :meth:`~scrobust_sc.model.SCRobust.get_latent_representation` with the same ``layer``.

    Raises
    ------
    ValueError
        When a set has no gene in the vocabulary.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> sets = scrobust.data.read_gmt("pancreas_celltype_genesets.gmt")  # doctest: +SKIP
    >>> vectors = scrobust.tl.pathway_vectors(model, sets)  # doctest: +SKIP
    >>> vectors.shape  # doctest: +SKIP
    (10, 128)
    """
    positions = list(match_gene_sets(model.gene_names_, gene_sets).values())
    return _pathway_vectors(model, positions, layer).cpu().numpy()


@torch.inference_mode()
def _pathway_vectors(model, positions: list[np.ndarray], layer: int) -> torch.Tensor:
    """``(n_sets, d)`` CLS outputs, on the model's device, for genes given by position."""
    module = model.module
    module.encoder._resolve_layer(layer)
    module.eval()
    out = []
    for p in positions:
        idx = torch.as_tensor(p, device=model.device)[None]
        ones = torch.ones(idx.shape, device=model.device)
        out.append(module.encoder(idx, ones, ones.bool(), layer=layer).float())
    return torch.cat(out)


def _cell_vector_batches(
    model, adata: ad.AnnData | None, positions: list[np.ndarray], layer: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """Pathway-informed cell vectors ``(B, n_sets, d)`` one mini-batch at a time."""
    module = model.module
    module.encoder._resolve_layer(layer)
    device = model.device
    indices = [torch.as_tensor(p, device=device) for p in positions]
    for tensors in model._batches(adata, None, batch_size):
        normalized = module._normalized(tensors)
        b = normalized.shape[0]
        per_set = []
        for idx in indices:
            # every gene of the set is a token, zeros included (select_genes would drop them)
            vals = torch.log1p(normalized[:, idx])
            idx_b = idx[None].expand(b, -1)
            valid = torch.ones_like(idx_b, dtype=torch.bool)
            per_set.append(module.encoder(idx_b, vals, valid, layer=layer).float())
        yield torch.stack(per_set, dim=1)


@torch.inference_mode()
def pathway_cell_vectors(
    model,
    adata: ad.AnnData | None = None,
    *,
    gene_sets: GeneSets,
    layer: int = -1,
    batch_size: int = 256,
) -> np.ndarray:
    """Pathway-informed cell vectors: the CLS output for a set's genes with a cell's values.

    Every gene of the set that the model knows is a token carrying the cell's
    log-normalised value, zeros included (a zero-valued token contributes no expression
    but still sits in the sequence).

    Parameters
    ----------
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    adata
        Cells (default: the model's AnnData); genes are matched to the model's by name.
    gene_sets
        Set name -> genes, or the path of a GMT file.
    layer
        Encoder layer (1-based, or negative from the end).
    batch_size
        Cells per mini-batch.

    Returns
    -------
    ``(n_cells, n_sets, d_model)`` float32 array (sets in the order of ``gene_sets``). For
    many cells use :func:`annotate_pathways`, which keeps only the closeness scores.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> cells = scrobust.tl.pathway_cell_vectors(model, adata, gene_sets=sets)  # doctest: +SKIP
    >>> scrobust.tl.closeness(cells, scrobust.tl.pathway_vectors(model, sets)).shape  # doctest: +SKIP
    (674, 10)
    """
    positions = list(match_gene_sets(model.gene_names_, gene_sets).values())
    chunks = [v.cpu() for v in _cell_vector_batches(model, adata, positions, layer, batch_size)]
    return torch.cat(chunks).numpy()


@torch.inference_mode()
def annotate_pathways(
    adata: ad.AnnData,
    model,
    *,
    gene_sets: GeneSets,
    key_added: str = "scrobust_pathway",
    unknown_threshold: float | None = None,
    layer: int = -1,
    batch_size: int = 256,
    copy: bool = False,
) -> ad.AnnData | None:
    """Annotate cells without labels: the pathway (gene set) each cell is closest to.

    For each cell and each set, the closeness of its pathway-informed cell vector
    (:func:`pathway_cell_vectors`) to the pathway vector (:func:`pathway_vectors`); the
    cell gets the set with the largest closeness. The paper annotated pancreas cell
    types this way with an encoder that was only pre-trained.

    Writes ``obs[f"{key_added}_label"]`` (categorical; ``"Unknown"`` where the largest
    closeness is below ``unknown_threshold``), ``obsm[f"{key_added}_scores"]`` (cells x
    sets closeness, float32) and ``uns[key_added]`` with ``"pathways"`` (the column names
    of the scores), ``"n_genes"`` (genes of each set found in the vocabulary) and
    ``"params"``; with ``"Unknown"`` cells, ``uns[f"{key_added}_label_colors"]`` as
    :func:`annotate` writes them.

    Parameters
    ----------
    adata
        Cells to annotate; genes are matched to the model's by name.
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    gene_sets
        Set name -> genes (e.g. cell-type gene sets), or the path of a GMT file.
    key_added
        Prefix of the written keys.
    unknown_threshold
        Closeness under which a cell is ``"Unknown"`` (1 means as long as the pathway
        vector along its direction); ``None`` never rejects.
    layer
        Encoder layer (1-based, or negative from the end).
    batch_size
        Cells per mini-batch.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the annotated copy when ``copy=True``.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> scrobust.tl.annotate_pathways(adata, model, gene_sets="pancreas_celltype_genesets.gmt")  # doctest: +SKIP
    >>> adata.obs["scrobust_pathway_label"].value_counts()  # doctest: +SKIP
    """
    matched = match_gene_sets(model.gene_names_, gene_sets)
    names = list(matched)
    if UNKNOWN_LABEL in names:
        raise ValueError(f"A gene set is named {UNKNOWN_LABEL!r}, the label of unassigned cells: rename it.")
    positions = list(matched.values())
    targets = _pathway_vectors(model, positions, layer)
    source = model.adata if adata is model.adata else adata
    chunks = [
        closeness(v, targets[None]).cpu() for v in _cell_vector_batches(model, source, positions, layer, batch_size)
    ]
    scores = torch.cat(chunks).numpy().astype(np.float32)
    labels = np.asarray(names, dtype=object)[scores.argmax(axis=1)]
    if unknown_threshold is not None:
        labels[scores.max(axis=1) < unknown_threshold] = UNKNOWN_LABEL
    target = adata.copy() if copy else adata
    write_label_column(target, f"{key_added}_label", labels, [*names, UNKNOWN_LABEL])
    target.obsm[f"{key_added}_scores"] = scores
    target.uns[key_added] = {
        "pathways": names,
        "n_genes": [int(p.size) for p in positions],
        "params": {"unknown_threshold": unknown_threshold, "layer": layer},
    }
    n_unknown = int((labels == UNKNOWN_LABEL).sum())
    logger.info(
        "Pathway annotation of %d cells over %d sets; %d %r.", target.n_obs, len(names), n_unknown, UNKNOWN_LABEL
    )
    return target if copy else None
