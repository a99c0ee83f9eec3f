"""Torch side, no AnnData: token selection, the encoder, heads and losses."""

from ._encoder import EncoderBlock, GeneTokenEmbedding, GeneTransformer
from ._heads import mlp_head
from ._losses import gather_across_processes, masked_mse, nt_xent_loss
from ._tokens import (
    normalize_atac_batch,
    normalize_batch,
    sample_random_genes,
    select_mixed_genes,
    select_ranked_genes,
    trim_padding,
)

__all__ = [
    "EncoderBlock",
    "GeneTokenEmbedding",
    "GeneTransformer",
    "gather_across_processes",
    "masked_mse",
    "mlp_head",
    "normalize_atac_batch",
    "normalize_batch",
    "nt_xent_loss",
    "sample_random_genes",
    "select_mixed_genes",
    "select_ranked_genes",
    "trim_padding",
]
