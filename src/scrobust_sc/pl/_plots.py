"""Plots of annotations, pathway vectors and attention markers (matplotlib and scanpy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from scrobust_sc.data._memory import check_dense_budget


def _save(ax: Axes, save: str | None) -> None:
    if save:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")


def _obs_column(adata: ad.AnnData, key: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise ValueError(f"{key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    return adata.obs[key]


def _category_colors(adata: ad.AnnData, key: str, column: pd.Series) -> dict:
    """Colour of each category of ``column`` (``obs[key]`` as a categorical), as scanpy draws it.

    The colours scanpy stores (``uns[f"{key}_colors"]``, in the order of the categories of
    ``obs[key]``) when they are valid and cover every category, else scanpy's defaults
    with ``"Unknown"`` light grey (:func:`~scrobust_sc.tl._labels.label_colors`).
    """
    from matplotlib.colors import is_color_like

    from scrobust_sc.tl._labels import label_colors

    categories = column.cat.categories
    stored = adata.uns.get(f"{key}_colors")
    own = adata.obs[key]
    if (
        stored is not None
        and isinstance(own.dtype, pd.CategoricalDtype)
        and len(stored) >= len(own.cat.categories)
        and all(is_color_like(c) for c in stored)
    ):
        colours = dict(zip(own.cat.categories, stored, strict=False))
        if all(c in colours for c in categories):
            return {c: colours[c] for c in categories}
    return dict(zip(categories, label_colors(categories), strict=True))


def confusion(
    adata: ad.AnnData,
    *,
    true: str,
    pred: str,
    normalize: bool = True,
    cmap: str = "Blues",
    ax: Axes | None = None,
    save: str | None = None,
) -> Axes:
    """Confusion matrix of two ``obs`` columns: known types (rows) vs predictions.

    Colours show the share of each row (known type) given each prediction; every cell
    of the matrix is annotated with its number of cells.

    Parameters
    ----------
    adata
        Annotated data.
    true
        ``obs`` column of the known labels (rows; categories in their order, other values
        sorted, numbers as numbers). Cells without a known label are left out.
    pred
        ``obs`` column of the predicted labels (columns), e.g. ``"scrobust_label"``.
    normalize
        Colour by the row share (each row sums to 1); ``False`` colours by counts.
    cmap
        Matplotlib colour map.
    ax
        Axes to draw on.
    save
        Path of an image file to write.

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> scrobust.pl.confusion(adata, true="cell_type", pred="scrobust_label", save="confusion.png")  # doctest: +SKIP
    """
    rows, cols = _obs_column(adata, true), _obs_column(adata, pred)
    labelled = (rows.notna() & cols.notna()).to_numpy()  # cells without a true (or predicted) label: left out
    rows, cols = rows[labelled], cols[labelled]
    counts = pd.crosstab(rows.astype(str).to_numpy(), cols.astype(str).to_numpy())
    counts = counts.reindex(index=_ordered(rows, counts.index), columns=_ordered(cols, counts.columns))
    shown = counts.div(counts.sum(axis=1).replace(0, 1), axis=0) if normalize else counts.astype(float)
    if ax is None:
        width = max(4.0, 0.6 * counts.shape[1] + 2.5)
        height = max(3.0, 0.5 * counts.shape[0] + 1.5)
        _, ax = plt.subplots(figsize=(width, height))
    vmax = 1.0 if normalize else max(float(shown.to_numpy().max()), 1.0)
    image = ax.imshow(shown.to_numpy(), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            dark = shown.iat[i, j] > 0.6 * vmax
            ax.text(
                j,
                i,
                str(counts.iat[i, j]),
                ha="center",
                va="center",
                fontsize="small",
                color="white" if dark else "black",
            )
    ax.set_xticks(range(counts.shape[1]), counts.columns, rotation=45, ha="right")
    ax.set_yticks(range(counts.shape[0]), counts.index)
    ax.set_xticks(np.arange(-0.5, counts.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, counts.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(pred)
    ax.set_ylabel(true)
    ax.figure.colorbar(image, ax=ax, label="share of row" if normalize else "cells")
    _save(ax, save)
    return ax


def _ordered(column: pd.Series, present: pd.Index) -> list[str]:
    """The categories of ``column`` in their own order (categorical) or sorted by value (numbers as numbers)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [str(c) for c in column.cat.categories]
    else:
        try:
            order = [str(v) for v in sorted(pd.unique(column.dropna()))]
        except TypeError:  # values of mixed types: as text
            order = sorted(present)
    return [c for c in order if c in set(present)]


def _two_dimensions(points: np.ndarray, basis: str, random_state: int) -> np.ndarray:
    """UMAP or t-SNE coordinates, with at most as many threads as torch is allowed."""
    import torch
    from threadpoolctl import threadpool_limits

    # scikit-learn's t-SNE otherwise starts one OpenMP thread per CPU the machine reports
    with threadpool_limits(limits=torch.get_num_threads()):
        return _two_dimensions_unlimited(points, basis, random_state)


def _two_dimensions_unlimited(points: np.ndarray, basis: str, random_state: int) -> np.ndarray:
    import scanpy as sc

    from scrobust_sc._neighbors import neighbors

    joint = ad.AnnData(np.asarray(points, dtype=np.float32))
    n = joint.n_obs
    if n < 4:
        raise ValueError(f"Need at least 4 points (cells and pathways) for a {basis} embedding, got {n}.")
    if basis == "umap":
        neighbors(joint, use_rep="X", n_neighbors=min(15, n - 1), random_state=random_state)
        sc.tl.umap(joint, random_state=random_state)
        return joint.obsm["X_umap"]
    sc.tl.tsne(joint, use_rep="X", perplexity=min(30.0, (n - 1) / 3.0), random_state=random_state)
    return joint.obsm["X_tsne"]


def spread_labels(
    points: np.ndarray,
    *,
    min_distance: float | np.ndarray,
    offset: float | np.ndarray = 0.0,
    n_iter: int = 200,
) -> np.ndarray:
    """Positions for text labels near ``points`` that keep at least ``min_distance`` apart.

    Each label starts at its point shifted by ``offset`` and labels closer than
    ``min_distance`` (per axis, in data units; an array gives one scale per axis) are
    pushed apart along the line between them, a little each round, for ``n_iter`` rounds.
    Labels that coincide exactly are separated in a fixed, seeded direction, so the
    result is deterministic.

    Parameters
    ----------
    points
        Anchor coordinates, ``(n, 2)``.
    min_distance
        Smallest gap between two labels, in data units (scalar or one per axis).
    offset
        Shift of each label from its point before spreading.
    n_iter
        Rounds of pushing.

    Returns
    -------
    Label coordinates, ``(n, 2)``.

    Examples
    --------
    >>> from scrobust_sc.pl import spread_labels
    >>> xy = spread_labels(np.array([[0.0, 0.0], [0.01, 0.0]]), min_distance=1.0)
    >>> bool(np.linalg.norm(xy[0] - xy[1]) >= 0.99)
    True
    """
    points = np.asarray(points, dtype=float)
    scale = np.broadcast_to(np.asarray(min_distance, dtype=float), (2,)).copy()
    scale[scale <= 0] = 1.0
    unit = (points + offset) / scale  # in units of the minimal gap
    jitter = np.random.default_rng(0).normal(size=unit.shape) * 1e-3
    for _ in range(n_iter):
        delta = unit[:, None, :] - unit[None, :, :]
        same = np.all(delta == 0, axis=2)
        delta[same] = jitter[np.nonzero(same)[0]]
        distance = np.linalg.norm(delta, axis=2)
        np.fill_diagonal(distance, np.inf)
        overlap = np.clip(1.0 - distance, 0.0, None)
        if not overlap.any():
            break
        push = (delta / np.maximum(distance, 1e-9)[:, :, None] * overlap[:, :, None] / 2).sum(axis=1)
        unit = unit + 0.6 * push
    return unit * scale


def _label_points(ax: Axes, points: np.ndarray, names: list[str]) -> None:
    """Label points with boxed texts spread apart by their drawn size, linked by thin lines."""
    texts = [
        ax.annotate(
            name,
            (x, y),
            xytext=(x, y),
            ha="center",
            va="center",
            fontsize="small",
            weight="bold",
            zorder=4,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
            arrowprops={"arrowstyle": "-", "color": "0.3", "lw": 0.6, "shrinkA": 0, "shrinkB": 4},
        )
        for (x, y), name in zip(points, names, strict=True)
    ]
    if not texts:
        return
    ax.autoscale_view()
    renderer = ax.figure.canvas.get_renderer() if hasattr(ax.figure.canvas, "get_renderer") else None
    if renderer is None:
        ax.figure.draw_without_rendering()
    extents = [t.get_window_extent(renderer) for t in texts]
    pixels = np.array([[0.0, 0.0], [max(e.width for e in extents), max(e.height for e in extents)]])
    corner = ax.transData.inverted().transform(pixels + ax.transData.transform(points[:1]))
    size = np.abs(corner[1] - corner[0])  # the largest label, in data units
    # 1.5 for the diagonal (a gap of 1 in x and y at once needs 1.41 in the ellipse), more for the box padding
    spread = spread_labels(points, min_distance=1.8 * size, offset=np.array([0.0, 1.0]) * size[1], n_iter=400)
    for text, position in zip(texts, spread, strict=True):
        text.xyann = tuple(position)


def pathway_embedding(
    adata: ad.AnnData,
    model,
    *,
    gene_sets: Mapping | str,
    basis: Literal["umap", "tsne"] = "umap",
    color: str | None = None,
    layer: int = -1,
    random_state: int = 0,
    ax: Axes | None = None,
    save: str | None = None,
) -> Axes:
    """Cells and pathway vectors in one UMAP or t-SNE (the paper's Fig. 4a).

    The cells' embeddings (:meth:`~scrobust_sc.model.SCRobust.get_latent_representation`)
    and the pathway vectors (:func:`~scrobust_sc.tl.pathway_vectors`, same ``layer``) are
    embedded together; pathways are drawn as labelled stars.

    Parameters
    ----------
    adata
        Cells; genes are matched to the model's by name.
    model
        A (pre-)trained :class:`~scrobust_sc.model.SCRobust`.
    gene_sets
        Set name -> genes, or the path of a GMT file.
    basis
        ``"umap"`` or ``"tsne"``.
    color
        ``obs`` column to colour the cells by (categories get a legend, numbers a colour
        bar); ``None``: grey. Categories take the colours scanpy would draw them in:
        ``uns[f"{color}_colors"]`` when set, else scanpy's defaults, ``"Unknown"`` and
        missing values light grey.
    layer
        Encoder layer of the cell and pathway vectors.
    random_state
        Seed of the 2-D embedding.
    ax
        Axes to draw on.
    save
        Path of an image file to write.

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> sets = scrobust.data.read_gmt("pancreas_celltype_genesets.gmt")  # doctest: +SKIP
    >>> scrobust.pl.pathway_embedding(adata, model, gene_sets=sets, basis="tsne", color="cell_type")  # doctest: +SKIP
    """
    from scrobust_sc.tl._pathways import _pathway_vectors, match_gene_sets

    if basis not in ("umap", "tsne"):
        raise ValueError(f"basis must be 'umap' or 'tsne', not {basis!r}.")
    values = _obs_column(adata, color) if color is not None else None
    matched = match_gene_sets(model.gene_names_, gene_sets)
    names = list(matched)
    pathways = _pathway_vectors(model, list(matched.values()), layer).cpu().numpy()
    source = model.adata if adata is model.adata else adata
    cells = model.get_latent_representation(source, layer=layer)
    coords = _two_dimensions(np.vstack([cells, pathways]), basis, random_state)
    cell_xy, path_xy = coords[: len(cells)], coords[len(cells) :]

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5))
    point_size = max(2.0, min(30.0, 12000.0 / max(len(cells), 1)))
    if values is None:
        ax.scatter(*cell_xy.T, s=point_size, c="lightgrey", linewidths=0)
    elif isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
        palette = _category_colors(adata, color, values.astype("category"))
        missing = values.isna().to_numpy()
        if missing.any():  # drawn under the others, in grey, as scanpy draws them
            ax.scatter(*cell_xy[missing].T, s=point_size, c="lightgrey", linewidths=0, label="NA")
        for category, colour in palette.items():
            mask = (values == category).to_numpy()
            ax.scatter(*cell_xy[mask].T, s=point_size, color=colour, linewidths=0, label=str(category))
        ax.legend(title=color, fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        points = ax.scatter(*cell_xy.T, s=point_size, c=values.to_numpy(dtype=float), cmap="viridis", linewidths=0)
        ax.figure.colorbar(points, ax=ax, label=color)
    ax.scatter(*path_xy.T, s=220, marker="*", c="black", edgecolors="white", linewidths=0.8, zorder=3)
    _label_points(ax, path_xy, names)
    label = "UMAP" if basis == "umap" else "t-SNE"
    ax.set_xlabel(f"{label} 1")
    ax.set_ylabel(f"{label} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("cells and pathway vectors (stars)")
    _save(ax, save)
    return ax


def _is_counts(matrix) -> bool:
    """Whether the stored values are non-negative integers (raw counts)."""
    values = matrix.data if hasattr(matrix, "data") and not isinstance(matrix, np.ndarray) else np.asarray(matrix)
    values = np.asarray(values).ravel()[:1_000_000]
    return bool(values.size) and bool(np.all(values >= 0)) and bool(np.all(np.mod(values, 1) == 0))


def _marker_view(adata: ad.AnnData, key: str, groupby: str, layer: str | None, log_normalize: bool | None):
    """A small AnnData with the marker genes only, log-normalised when the data are counts."""
    from scipy import sparse

    from scrobust_sc._constants import TARGET_SUM

    names = adata.uns[key]["names"]
    markers = pd.unique(np.concatenate([np.asarray(names[g]).astype(str) for g in names.dtype.names]))
    missing = [g for g in markers if g not in adata.var_names]
    if missing:
        raise ValueError(
            f"Markers not in adata.var_names: {missing[:5]}. Plot them on the AnnData marker_genes wrote into."
        )
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    matrix = adata.X if layer is None else adata.layers[layer]
    columns = adata.var_names.get_indexer(markers)
    check_dense_budget(
        adata.n_obs,
        len(columns),
        np.float32,
        what=f"The marker plot's cells x markers matrix ({len(columns)} markers)",
        fix="Plot fewer markers (`n_genes=`) or a subset of cells.",
    )
    values = matrix[:, columns]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    values = values.astype(np.float32)
    if log_normalize is None:
        log_normalize = _is_counts(matrix)
    if log_normalize:
        library = np.asarray(matrix.sum(axis=1)).ravel()
        values = np.log1p(values / np.clip(library, 1e-8, None)[:, None] * TARGET_SUM).astype(np.float32)
    obs = pd.DataFrame({groupby: _obs_column(adata, groupby).astype("category")}, index=adata.obs_names)
    grouped = obs[groupby].notna().to_numpy()  # cells without a group have no markers (left out, as by marker_genes)
    view = ad.AnnData(values[grouped], obs=obs[grouped], var=adata.var.iloc[columns].copy())
    view.obs[groupby] = view.obs[groupby].cat.remove_unused_categories()
    # the heatmap's group bar in the colours of the user's column ("Unknown" light grey)
    colours = _category_colors(adata, groupby, obs[groupby])
    view.uns[f"{groupby}_colors"] = [colours[c] for c in view.obs[groupby].cat.categories]
    view.uns[key] = adata.uns[key]
    return view


def attention_markers(
    adata: ad.AnnData,
    key: str = "scrobust_markers",
    *,
    kind: Literal["heatmap", "dotplot", "matrixplot"] = "heatmap",
    groupby: str | None = None,
    n_genes: int | None = None,
    layer: str | None = None,
    log_normalize: bool | None = None,
    save: str | None = None,
    **kwargs,
) -> Axes:
    """Expression of the attention markers per group, through scanpy.

    Draws the results of :func:`~scrobust_sc.tl.marker_genes` with
    :func:`scanpy.pl.rank_genes_groups_heatmap` (cells grouped by type x markers, the
    paper's Fig. 5a), ``_dotplot`` or ``_matrixplot``. Raw counts are shown
    log-normalised (per cell to 1e4, ``log1p``; only the marker genes are copied), and each
    gene is scaled to 0-1 across cells (``standard_scale="var"``).

    Parameters
    ----------
    adata
        The AnnData :func:`~scrobust_sc.tl.marker_genes` wrote into.
    key
        ``uns`` key of the markers.
    kind
        ``"heatmap"``, ``"dotplot"`` or ``"matrixplot"``.
    groupby
        ``obs`` column to group cells by (default: the one of the markers).
    n_genes
        Markers per group to show (default: all stored).
    layer
        Layer with the expression to show (default ``X``).
    log_normalize
        Log-normalise before plotting; ``None``: when the values are raw counts.
    save
        Path of an image file to write.
    **kwargs
        Passed to the scanpy function (e.g. ``standard_scale=None``, ``cmap=``).

    Returns
    -------
    The main matplotlib axes of the plot.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> scrobust.tl.marker_genes(adata, model, groupby="cell_type")  # doctest: +SKIP
    >>> scrobust.pl.attention_markers(adata, kind="dotplot", save="markers.png")  # doctest: +SKIP
    """
    import scanpy as sc

    if key not in adata.uns or "names" not in adata.uns[key]:
        raise ValueError(f"adata.uns[{key!r}] holds no markers: run `scrobust.tl.marker_genes(adata, model, ...)`.")
    plotters = {
        "heatmap": (sc.pl.rank_genes_groups_heatmap, "heatmap_ax"),
        "dotplot": (sc.pl.rank_genes_groups_dotplot, "mainplot_ax"),
        "matrixplot": (sc.pl.rank_genes_groups_matrixplot, "mainplot_ax"),
    }
    if kind not in plotters:
        raise ValueError(f"kind must be one of {list(plotters)}, not {kind!r}.")
    plot, main = plotters[kind]
    groupby = groupby if groupby is not None else str(adata.uns[key]["params"]["groupby"])
    view = _marker_view(adata, key, groupby, layer, log_normalize)
    n_genes = n_genes if n_genes is not None else len(adata.uns[key]["names"])
    kwargs.setdefault("standard_scale", "var")
    kwargs.setdefault("dendrogram", False)
    axes = plot(view, key=key, groupby=groupby, n_genes=n_genes, show=False, **kwargs)
    ax = axes[main] if isinstance(axes, Mapping) else axes
    _save(ax, save)
    return ax
