"""AnnData side: validation, gene ranking, query alignment, splits, demo data."""

from ._alignment import GeneAlignment, align_to_genes, looks_like_ensembl, match_genes, reindex_matrix
from ._demo import pbmc_demo
from ._gmt import read_gmt
from ._memory import DenseBudgetError, check_dense_budget, dense_nbytes, matrix_in_memory
from ._ranking import expressed_fraction, hvg_score, log_normalized_moments, unique_gene_score
from ._splits import class_weights, stratified_validation_split
from ._validation import check_finite_nonnegative, check_gene_names, detect_input_kind

__all__ = [
    "DenseBudgetError",
    "GeneAlignment",
    "align_to_genes",
    "check_dense_budget",
    "check_finite_nonnegative",
    "check_gene_names",
    "class_weights",
    "dense_nbytes",
    "detect_input_kind",
    "expressed_fraction",
    "hvg_score",
    "log_normalized_moments",
    "looks_like_ensembl",
    "match_genes",
    "matrix_in_memory",
    "pbmc_demo",
    "read_gmt",
    "reindex_matrix",
    "stratified_validation_split",
    "unique_gene_score",
]
