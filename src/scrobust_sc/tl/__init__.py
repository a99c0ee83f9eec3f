"""Scanpy-style tools: thin wrappers that call the model and write obs / obsm / uns."""

from scrobust_sc.model._attention import gene_attention

from ._annotate import annotate, fit_annotator
from ._embed import embed
from ._markers import marker_genes
from ._pathways import annotate_pathways, closeness, match_gene_sets, pathway_cell_vectors, pathway_vectors

__all__ = [
    "annotate",
    "annotate_pathways",
    "closeness",
    "embed",
    "fit_annotator",
    "gene_attention",
    "marker_genes",
    "match_gene_sets",
    "pathway_cell_vectors",
    "pathway_vectors",
]
