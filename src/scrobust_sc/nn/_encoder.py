"""The scRobust encoder: gene tokens scaled by expression, a CLS token, Transformer blocks."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from scrobust_sc._constants import CLS_TOKEN, N_SPECIAL_TOKENS

ValueEncoding = Literal["mlp", "published"]


class GeneTokenEmbedding(nn.Module):
    """Token embedding ``x * W[g] / ||W[g]||`` with an optional learned value encoding.

    Parameters
    ----------
    n_genes
        Number of gene tokens (the vocabulary adds the special tokens).
    d_model
        Embedding width.
    value_encoding
        ``"published"``: the paper's token, expression times the unit gene vector.
        ``"mlp"``: that token plus ``f(x)``, a small MLP of the value whose last layer
        starts at 0.1 of its usual scale. It keeps the value visible after a LayerNorm,
        which cancels a pure scaling.
    """

    def __init__(self, n_genes: int, d_model: int, value_encoding: ValueEncoding = "mlp", value_hidden: int = 32):
        super().__init__()
        if value_encoding not in ("mlp", "published"):
            raise ValueError(f"value_encoding must be 'mlp' or 'published', not {value_encoding!r}.")
        self.value_encoding = value_encoding
        self.weight = nn.Parameter(torch.randn(n_genes + N_SPECIAL_TOKENS, d_model) / d_model**0.5)
        if value_encoding == "mlp":
            self.value_mlp = nn.Sequential(nn.Linear(1, value_hidden), nn.GELU(), nn.Linear(value_hidden, d_model))
            with torch.no_grad():
                self.value_mlp[2].weight.mul_(0.1)
                self.value_mlp[2].bias.zero_()

    def gene_vectors(self, gene_idx: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) embeddings of genes given by gene index (0-based)."""
        return self.weight[gene_idx + N_SPECIAL_TOKENS]

    def forward(self, gene_idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, L)`` genes with values and prepend the CLS token: ``(B, L + 1, d)``."""
        unit = F.normalize(self.weight, dim=-1)
        tokens = unit[gene_idx + N_SPECIAL_TOKENS] * values.unsqueeze(-1)
        if self.value_encoding == "mlp":
            tokens = tokens + self.value_mlp(values.unsqueeze(-1))
        cls = unit[CLS_TOKEN].expand(gene_idx.shape[0], 1, -1)
        return torch.cat([cls, tokens], dim=1)


class EncoderBlock(nn.Module):
    """One Transformer block on ``scaled_dot_product_attention`` with a key-padding mask.

    Parameters
    ----------
    d_model, n_heads, dropout
        Width, attention heads and dropout rate.
    norm_first
        Pre-LayerNorm (the published form) when ``True``; post-LayerNorm otherwise.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.1, norm_first: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.n_heads = n_heads
        self.norm_first = norm_first
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, length, d = t.shape
        return t.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _attention(self, h: torch.Tensor, keep: torch.Tensor, cls_only: bool, return_attention: bool):
        d = h.shape[-1]
        w, b = self.in_proj.weight, self.in_proj.bias
        q_in = h[:, :1] if cls_only else h
        q = self._heads(F.linear(q_in, w[:d], b[:d]))
        k, v = F.linear(h, w[d:], b[d:]).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        mask = keep[:, None, None, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(q_in.shape))
        attn = None
        if return_attention:
            scores = (q[:, :, :1] @ k.transpose(-1, -2)) / (k.shape[-1] ** 0.5)
            scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1).mean(dim=1)[:, 0]
        return out, attn

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor, *, cls_only: bool = False, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the block.

        Parameters
        ----------
        x
            ``(B, L, d)`` tokens, CLS first.
        keep
            ``(B, L)`` True for real tokens, False for padding.
        cls_only
            Compute the output of the CLS position only (keys and values from all tokens).
        return_attention
            Also return the CLS query's attention over tokens, averaged over heads ``(B, L)``.
        """
        residual = x[:, :1] if cls_only else x
        if self.norm_first:
            a, attn = self._attention(self.norm1(x), keep, cls_only, return_attention)
            y = residual + self.drop(a)
            y = y + self.drop(self.ffn(self.norm2(y)))
        else:
            a, attn = self._attention(x, keep, cls_only, return_attention)
            y = self.norm1(residual + self.drop(a))
            y = self.norm2(y + self.drop(self.ffn(y)))
        return y, attn


class GeneTransformer(nn.Module):
    """Token embedding plus a stack of :class:`EncoderBlock`; returns CLS outputs.

    Examples
    --------
    >>> import torch
    >>> enc = GeneTransformer(n_genes=10, d_model=16, n_heads=2, n_layers=1)
    >>> idx = torch.tensor([[0, 3, 5]]); vals = torch.ones(1, 3); keep = torch.ones(1, 3, dtype=torch.bool)
    >>> enc(idx, vals, keep).shape
    torch.Size([1, 16])

    Without gradients (inference) a batch runs in chunks of cells whose token tensors hold
    at most :attr:`inference_chunk_elements` numbers each (64 MB in float32), so peak memory
    does not grow with the batch size; the outputs are those of the whole batch.
    """

    #: Most numbers (cells x tokens x d_model) in one token tensor during inference.
    inference_chunk_elements: int = 2**24

    def __init__(
        self,
        n_genes: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 1,
        dropout: float = 0.1,
        value_encoding: ValueEncoding = "mlp",
        norm_first: bool = True,
        pooling: Literal["cls", "cls_mean"] = "cls",
    ):
        super().__init__()
        if pooling not in ("cls", "cls_mean"):
            raise ValueError(f"pooling must be 'cls' or 'cls_mean', not {pooling!r}.")
        self.pooling = pooling
        self.embedding = GeneTokenEmbedding(n_genes, d_model, value_encoding)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, n_heads, dropout, norm_first) for _ in range(n_layers))
        if pooling == "cls_mean":
            self.pool_norm = nn.LayerNorm(d_model)
            self.pool_proj = nn.Linear(d_model, d_model)

    @property
    def n_layers(self) -> int:
        """Number of Transformer blocks."""
        return len(self.blocks)

    def _resolve_layer(self, layer: int) -> int:
        n = self.n_layers
        resolved = layer + n if layer < 0 else layer - 1
        if not 0 <= resolved < n:
            raise ValueError(f"layer must be in 1..{n} or -{n}..-1, got {layer}.")
        return resolved

    def forward(
        self,
        gene_idx: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        *,
        layer: int = -1,
        return_attention: bool = False,
    ):
        """CLS output ``(B, d)`` of ``layer`` (1-based, or negative from the end).

        With ``return_attention``, also the CLS attention of that layer over the gene
        tokens ``(B, L)`` (padding gets 0).
        """
        batch, length = gene_idx.shape
        rows = max(1, self.inference_chunk_elements // max(1, (length + 1) * self.embedding.weight.shape[1]))
        if not torch.is_grad_enabled() and batch > rows:
            chunks = [slice(i, i + rows) for i in range(0, batch, rows)]
            parts = [self._forward(gene_idx[c], values[c], valid[c], layer, return_attention) for c in chunks]
            if return_attention:
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            return torch.cat(parts)
        return self._forward(gene_idx, values, valid, layer, return_attention)

    def _forward(self, gene_idx, values, valid, layer: int, return_attention: bool):
        last = self._resolve_layer(layer)
        x = self.embedding(gene_idx, values)
        keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        attn = None
        for i in range(last + 1):
            cls_only = i == last
            if cls_only and self.pooling == "cls_mean":
                w = valid.unsqueeze(-1).to(x.dtype)
                pooled = (self.pool_norm(x[:, 1:]) * w).sum(1) / w.sum(1).clamp_min(1.0)
            x, attn = self.blocks[i](x, keep, cls_only=cls_only, return_attention=return_attention and cls_only)
        cls = x[:, 0]
        if self.pooling == "cls_mean":
            cls = cls + self.pool_proj(pooled)
        if return_attention:
            return cls, attn[:, 1:]
        return cls
