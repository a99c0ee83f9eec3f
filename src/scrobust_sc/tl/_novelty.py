"""Novelty read over each cell's neighbourhood in the annotated data, not the cell alone.

A cell's own novelty score is compared with thresholds set on the reference. Two things
make a single cell's score misleading: its noise (a few known cells of every type land in
the tail) and a shift of the whole query (another platform or batch puts every cell a
little farther from the reference). Cells of a type the reference lacks come as a
population, so the median score of a cell's nearest cells in the query's own expression
space keeps them and drops the lone outliers and the shift that does not cross the
threshold (``docs/benchmarks.md``, "Unknown" over neighbourhoods).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

from scrobust_sc.data._atac import (
    _idf_of_counts,
    _top_counts_mask,
    fit_lsi,
    lsi,
    lsi_transform,
    peak_cell_counts,
    tfidf_matrix,
)
from scrobust_sc.data._ranking import (
    _row_chunks,
    log_normalized_block,
    log_normalized_moments,
    seurat_dispersion,
    top_genes_mask,
)

logger = logging.getLogger("scrobust_sc")

#: Cells in a neighbourhood (the cell itself included) whose median novelty decides.
DEFAULT_NOVELTY_NEIGHBORS = 15
#: Genes and principal components of the query's own expression space.
NEIGHBOURHOOD_GENES = 2000
NEIGHBOURHOOD_PCS = 30
#: Peaks of a scATAC query's own LSI space: the most often accessible ones.
NEIGHBOURHOOD_PEAKS = 20000
#: Fewer cells than this many neighbourhoods' worth and each cell's own novelty is kept: on
#: a 120-cell query (a split of the 600-cell demo data) the PCA neighbours of 12 unseen
#: monocytes were monocytes 10% of the time and the median caught none of them; the rule
#: was measured on queries of 172 to 3,874 cells (docs/benchmarks.md).
MIN_CELLS_PER_NEIGHBOR = 10
#: Exact neighbours below this many cells, pynndescent above (as scanpy).
EXACT_NEIGHBORS_LIMIT = 8192
#: A larger query's PCA (or LSI) is fitted on a seeded sample of this many cells and every
#: cell is projected on it chunk by chunk, so that the memory of the fit stops growing with
#: the query (the fit holds the sample's non-zeros of the chosen genes and arpack's
#: Lanczos vectors, about 0.5 KB a cell, where the projections hold 120 bytes).
NEIGHBOURHOOD_FIT_CELLS = 100_000


def neighbourhood_genes(matrix, *, input_is_log: bool, n_genes: int = NEIGHBOURHOOD_GENES) -> np.ndarray:
    """Positions of the ``n_genes`` genes of highest Seurat dispersion of the log-normalised values.

    :func:`~scrobust_sc.data.seurat_dispersion` on the per-gene moments of
    ``log1p(normalize_total(x, 1e4))``, read chunk by chunk; genes that never vary are
    never chosen.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.random.default_rng(0).poisson(2.0, size=(60, 6))
    >>> counts[:, 5] = 0  # gene 5 is never expressed
    >>> neighbourhood_genes(counts, input_is_log=False, n_genes=10).tolist()
    [0, 1, 2, 3, 4]
    """
    mean, var = log_normalized_moments(matrix, input_is_log=input_is_log)
    return np.flatnonzero(top_genes_mask(seurat_dispersion(mean, var), n_genes))


def expression_pcs(
    matrix,
    *,
    input_is_log: bool,
    n_genes: int = NEIGHBOURHOOD_GENES,
    n_pcs: int = NEIGHBOURHOOD_PCS,
    seed: int = 0,
    max_fit_cells: int | None = NEIGHBOURHOOD_FIT_CELLS,
) -> np.ndarray:
    """Principal components of ``log1p`` counts per 10,000 over the data's most variable genes.

    The genes are :func:`neighbourhood_genes`. Read chunk by chunk: only the chosen genes'
    non-zeros are held at once. With more than ``max_fit_cells`` cells the PCA is fitted on
    a seeded sample of that many (:func:`fit_sample`) and every cell is projected on it,
    chunk by chunk; ``None`` fits on every cell.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.random.default_rng(0).poisson(1.0, size=(40, 30))
    >>> expression_pcs(counts, input_is_log=False, n_genes=20, n_pcs=5).shape
    (40, 5)
    >>> expression_pcs(counts, input_is_log=False, n_genes=20, n_pcs=5, max_fit_cells=20).shape
    (40, 5)
    """
    from sklearn.decomposition import PCA

    genes = neighbourhood_genes(matrix, input_is_log=input_is_log, n_genes=n_genes)

    def features(block):
        return log_normalized_block(block, input_is_log=input_is_log)[:, genes].astype(np.float32)

    sample = fit_sample(matrix.shape[0], max_fit_cells, seed=seed)
    values = _stacked_rows(matrix, features, genes.size, rows=sample)
    n_components = min(n_pcs, values.shape[0] - 1, values.shape[1] - 1)
    if n_components < 1:
        return np.zeros((matrix.shape[0], 0), dtype=np.float32)
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed)
    if sample is None:
        return pca.fit_transform(values).astype(np.float32)
    pca.fit(values)
    del values
    return np.vstack([pca.transform(features(block)).astype(np.float32) for block in _row_chunks(matrix)])


def fit_sample(n_cells: int, max_cells: int | None, *, seed: int = 0) -> np.ndarray | None:
    """Sorted positions of a seeded sample of ``max_cells`` cells, or ``None`` when every cell fits.

    Examples
    --------
    >>> fit_sample(10, 20) is None, fit_sample(10, None) is None
    (True, True)
    >>> fit_sample(10, 4, seed=0).size
    4
    """
    if max_cells is not None and (isinstance(max_cells, bool) or int(max_cells) != max_cells or max_cells < 2):
        raise ValueError(f"max_fit_cells must be a whole number of at least 2 or None, not {max_cells!r}.")
    if max_cells is None or n_cells <= max_cells:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_cells, int(max_cells), replace=False))


def _stacked_rows(matrix, features, n_features: int, *, rows: np.ndarray | None = None) -> sparse.csr_matrix:
    """``features`` of ``matrix``'s rows (all, or the sorted positions ``rows``), read chunk by chunk, stacked."""
    blocks, start = [], 0
    for block in _row_chunks(matrix):
        stop = start + block.shape[0]
        if rows is None:
            blocks.append(features(block))
        else:
            keep = rows[(rows >= start) & (rows < stop)] - start
            if keep.size:
                blocks.append(features(block[keep]))
        start = stop
    if not blocks:
        return sparse.csr_matrix((0, n_features), dtype=np.float32)
    return sparse.vstack(blocks, format="csr")


def peak_lsi(
    matrix,
    *,
    n_peaks: int = NEIGHBOURHOOD_PEAKS,
    n_components: int = NEIGHBOURHOOD_PCS,
    seed: int = 0,
    max_fit_cells: int | None = NEIGHBOURHOOD_FIT_CELLS,
) -> np.ndarray:
    """LSI of a peak matrix's TF-IDF over its ``n_peaks`` most often accessible peaks.

    The scATAC counterpart of :func:`expression_pcs`: TF-IDF of the binarised counts
    (:func:`~scrobust_sc.data.tfidf_matrix`, the inverse document frequency of the whole
    matrix), then :func:`~scrobust_sc.data.lsi` (first component dropped, unit rows). Two
    passes, chunk by chunk: only the chosen peaks' non-zeros are held at once. With more
    than ``max_fit_cells`` cells the SVD is fitted on a seeded sample of that many and
    every cell is projected on it, chunk by chunk.

    Examples
    --------
    >>> import numpy as np
    >>> peaks = np.random.default_rng(0).binomial(1, 0.2, size=(40, 30))
    >>> peak_lsi(peaks, n_peaks=20, n_components=5).shape
    (40, 5)
    >>> peak_lsi(peaks, n_peaks=20, n_components=5, max_fit_cells=20).shape
    (40, 5)
    """
    counts = peak_cell_counts(matrix)  # one pass for the peaks and their IDF, one for the TF-IDF
    keep = np.flatnonzero(_top_counts_mask(counts, n_top=n_peaks))
    idf = _idf_of_counts(matrix.shape[0], counts[keep])

    def features(block):
        return tfidf_matrix(block[:, keep], idf)

    sample = fit_sample(matrix.shape[0], max_fit_cells, seed=seed)
    values = _stacked_rows(matrix, features, keep.size, rows=sample)
    if sample is None:
        return lsi(values, n_components=n_components, seed=seed)[0].astype(np.float32)
    svd = fit_lsi(values, n_components=n_components, seed=seed)
    del values
    return np.vstack([lsi_transform(svd, features(block)).astype(np.float32) for block in _row_chunks(matrix)])


def neighbourhood_space(
    matrix,
    *,
    input_is_log: bool,
    modality: str = "rna",
    seed: int = 0,
    max_fit_cells: int | None = NEIGHBOURHOOD_FIT_CELLS,
) -> np.ndarray:
    """The data's own space whose nearest cells form a neighbourhood: PCA of genes, LSI of peaks.

    :func:`expression_pcs` for ``modality="rna"``, :func:`peak_lsi` for ``"atac"``, fitted on
    at most ``max_fit_cells`` cells.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.random.default_rng(0).poisson(1.0, size=(60, 40))
    >>> neighbourhood_space(counts, input_is_log=False).shape
    (60, 30)
    """
    if modality == "atac":
        return peak_lsi(matrix, seed=seed, max_fit_cells=max_fit_cells)
    if modality != "rna":
        raise ValueError(f"modality must be 'rna' or 'atac', not {modality!r}.")
    return expression_pcs(matrix, input_is_log=input_is_log, seed=seed, max_fit_cells=max_fit_cells)


def nearest_cells(points: np.ndarray, n_neighbors: int, *, seed: int = 0) -> np.ndarray:
    """Each cell's ``n_neighbors`` nearest cells (Euclidean), itself included: ``(n, k)`` positions.

    Exact below :data:`EXACT_NEIGHBORS_LIMIT` cells, approximate (pynndescent) above.

    Examples
    --------
    >>> import numpy as np
    >>> nearest_cells(np.array([[0.0], [0.1], [5.0], [5.2]]), 2).tolist()
    [[0, 1], [1, 0], [2, 3], [3, 2]]
    """
    points = np.asarray(points, dtype=np.float32)
    k = min(n_neighbors, points.shape[0])
    if points.shape[0] < EXACT_NEIGHBORS_LIMIT:
        from sklearn.neighbors import NearestNeighbors

        idx = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points, return_distance=False)
    else:
        from pynndescent import NNDescent

        idx = NNDescent(points, n_neighbors=k, random_state=seed).neighbor_graph[0]
    own = np.arange(points.shape[0])
    missing = ~(idx == own[:, None]).any(axis=1)  # an exact duplicate may take a cell's own place
    idx[missing, -1] = own[missing]
    return idx


def neighbourhood_median(values: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Median of ``values`` over each row of ``neighbors`` (positions into ``values``).

    Examples
    --------
    >>> import numpy as np
    >>> neighbourhood_median(np.array([0.2, 3.0, 0.4]), np.array([[0, 1, 2], [1, 0, 2], [2, 1, 1]])).tolist()
    [0.4, 0.4, 3.0]
    """
    values = np.asarray(values, dtype=np.float64)
    return np.median(values[np.asarray(neighbors)], axis=1)


def reads_neighbourhoods(n_cells: int, n_neighbors: int) -> bool:
    """Whether ``n_cells`` are enough for neighbourhoods of ``n_neighbors`` (logged when they are not).

    A neighbourhood of one is the cell itself; fewer than :data:`MIN_CELLS_PER_NEIGHBOR`
    times ``n_neighbors`` cells are too few for a PCA to find reliable neighbourhoods.

    Examples
    --------
    >>> reads_neighbourhoods(150, 15), reads_neighbourhoods(120, 15), reads_neighbourhoods(1000, 1)
    (True, False, False)
    """
    if n_neighbors <= 1:
        return False
    if n_cells < MIN_CELLS_PER_NEIGHBOR * n_neighbors:
        logger.info(
            "Novelty of each cell alone: %d cells are too few for neighbourhoods of %d (at least %d needed).",
            n_cells,
            n_neighbors,
            MIN_CELLS_PER_NEIGHBOR * n_neighbors,
        )
        return False
    return True


def neighbourhood_novelty(
    novelty: np.ndarray,
    matrix,
    *,
    input_is_log: bool,
    n_neighbors: int = DEFAULT_NOVELTY_NEIGHBORS,
    modality: str = "rna",
    seed: int = 0,
    max_fit_cells: int | None = NEIGHBOURHOOD_FIT_CELLS,
) -> np.ndarray:
    """The median novelty of each cell's ``n_neighbors`` nearest cells in ``matrix``'s expression space.

    ``matrix`` holds the same cells' counts (or log-normalised values when
    ``input_is_log``), or their peak counts for ``modality="atac"``; the space is the PCA
    of its most variable genes (:func:`expression_pcs`) or the LSI of its peaks
    (:func:`peak_lsi`), fitted on at most ``max_fit_cells`` cells (a seeded sample of a
    larger query, every cell projected), so it is the data's own structure, not the model's. With
    fewer than :data:`MIN_CELLS_PER_NEIGHBOR` times ``n_neighbors`` cells, too few for a
    PCA to find reliable neighbourhoods, each cell's own novelty is returned (logged).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> counts = np.vstack([rng.poisson(5.0, size=(30, 40)), rng.poisson(0.2, size=(30, 40))])
    >>> novelty = np.r_[np.full(30, 0.2), np.full(30, 2.0)]
    >>> novelty[0] = 5.0  # a lone outlier among known cells
    >>> smoothed = neighbourhood_novelty(novelty, counts, input_is_log=False, n_neighbors=5)
    >>> bool(smoothed[0] < 1), bool((smoothed[30:] > 1).all())
    (True, True)
    """
    novelty = np.asarray(novelty, dtype=np.float64)
    if novelty.shape[0] != matrix.shape[0]:
        raise ValueError(f"{novelty.shape[0]} novelty scores for {matrix.shape[0]} cells.")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, not {n_neighbors}.")
    if not reads_neighbourhoods(novelty.shape[0], n_neighbors):
        return novelty.copy()
    pcs = neighbourhood_space(
        matrix, input_is_log=input_is_log, modality=modality, seed=seed, max_fit_cells=max_fit_cells
    )
    if pcs.shape[1] == 0:
        return novelty.copy()
    return neighbourhood_median(novelty, nearest_cells(pcs, n_neighbors, seed=seed))
