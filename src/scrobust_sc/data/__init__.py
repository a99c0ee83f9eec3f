"""AnnData side: validation, gene ranking, query alignment, splits, demo data."""

from ._alignment import GeneAlignment, align_to_genes, looks_like_ensembl, match_genes, reindex_matrix
from ._atac import (
    atac_dispersion,
    atac_moments,
    binarize,
    check_atac_values,
    inverse_document_frequency,
    lsi,
    peak_cell_counts,
    tfidf_matrix,
    top_peaks_mask,
)
from ._demo import pbmc_demo
from ._gmt import read_gmt
from ._memory import DenseBudgetError, check_dense_budget, dense_nbytes, matrix_in_memory
from ._peaks import format_peak_names, parse_peak_names, peak_names
from ._ranking import (
    dispersion,
    expressed_fraction,
    hvg_score,
    inverse_std,
    log_normalized_moments,
    normalized_moments,
    seurat_dispersion,
    top_genes_mask,
    unique_gene_score,
)
from ._splits import class_weights, stratified_validation_split
from ._validation import check_finite_nonnegative, check_gene_names, detect_input_kind

__all__ = [
    "DenseBudgetError",
    "GeneAlignment",
    "align_to_genes",
    "atac_dispersion",
    "atac_moments",
    "binarize",
    "check_atac_values",
    "check_dense_budget",
    "check_finite_nonnegative",
    "check_gene_names",
    "class_weights",
    "dense_nbytes",
    "detect_input_kind",
    "dispersion",
    "expressed_fraction",
    "format_peak_names",
    "hvg_score",
    "inverse_document_frequency",
    "inverse_std",
    "log_normalized_moments",
    "looks_like_ensembl",
    "lsi",
    "match_genes",
    "matrix_in_memory",
    "normalized_moments",
    "parse_peak_names",
    "pbmc_demo",
    "peak_cell_counts",
    "peak_names",
    "read_gmt",
    "reindex_matrix",
    "seurat_dispersion",
    "stratified_validation_split",
    "tfidf_matrix",
    "top_genes_mask",
    "top_peaks_mask",
    "unique_gene_score",
]
