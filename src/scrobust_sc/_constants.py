"""Names and numbers used across the package, defined once."""

from __future__ import annotations

#: Token index of padding. Padding is never attended to.
PAD_TOKEN = 0
#: Token index of the cell (CLS) token, always at position 0 with value 1.0.
CLS_TOKEN = 1
#: Number of special tokens that precede the gene tokens in the vocabulary.
N_SPECIAL_TOKENS = 2

#: Target library size of the per-cell normalisation (``normalize_total``).
TARGET_SUM = 1e4

#: Label written for cells whose prediction is not confident enough.
UNKNOWN_LABEL = "Unknown"
#: Colour of ``UNKNOWN_LABEL`` cells in plots: scanpy's colour of unassigned cells (its ``na_color``).
UNKNOWN_COLOR = "lightgray"
#: Missing values turned into text (``astype(str)`` of NaN or None; anndata stores a ``None`` name as "None").
MISSING_AS_TEXT = ("nan", "NaN", "None", "<NA>")

#: Default key of the embedding in ``adata.obsm`` and prefix of the other keys.
DEFAULT_KEY = "scrobust"
EMBEDDING_KEY = "X_scrobust"

#: Gene orderings available for choosing the genes a cell shows the encoder.
GENE_SELECTIONS = ("unique", "mixed", "expressed", "hvg", "random")
#: The linear expert's standardised values are clipped here (as ``scanpy.pp.scale(max_value=10)``).
EXPERT_VALUE_CLIP = 10.0
