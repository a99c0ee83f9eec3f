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
        return F.embedding(gene_idx + N_SPECIAL_TOKENS, self.weight)

    def forward(self, gene_idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, L)`` genes with values and prepend the CLS token: ``(B, L + 1, d)``."""
        cls, tokens = self.parts(gene_idx, values)
        return torch.cat([cls, tokens], dim=1)

    def parts(self, gene_idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CLS token ``(B, 1, d)`` and the gene tokens ``(B, L, d)``, not concatenated.

        Only the selected rows are normalised (not the whole vocabulary), and the value
        scaling and the value encoding are added in one fused operation.

        Examples
        --------
        >>> import torch
        >>> emb = GeneTokenEmbedding(10, 4)
        >>> cls, tokens = emb.parts(torch.tensor([[1, 7]]), torch.tensor([[0.5, 2.0]]))
        >>> cls.shape, tokens.shape
        (torch.Size([1, 1, 4]), torch.Size([1, 2, 4]))
        """
        # F.embedding, not weight[idx]: on CPU its backward sums the rows' gradients ~1.4x as fast
        rows = F.embedding(gene_idx + N_SPECIAL_TOKENS, self.weight)
        scale = (values / torch.linalg.vector_norm(rows, dim=-1).clamp_min(1e-12)).unsqueeze(-1)
        if self.value_encoding == "mlp":
            tokens = torch.addcmul(self.value_mlp(values.unsqueeze(-1)), rows, scale)
        else:
            tokens = rows * scale
        cls = F.normalize(self.weight[CLS_TOKEN], dim=-1).expand(gene_idx.shape[0], 1, -1)
        return cls, tokens


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

    def _attention(self, h: torch.Tensor, keep: torch.Tensor, return_attention: bool):
        """Self-attention of every token (``scaled_dot_product_attention``)."""
        d = h.shape[-1]
        q, k, v = (self._heads(t) for t in F.linear(h, self.in_proj.weight, self.in_proj.bias).chunk(3, dim=-1))
        mask = keep[:, None, None, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(h.shape))
        attn = None
        if return_attention:
            scores = (q[:, :, :1] @ k.transpose(-1, -2)) / ((d // self.n_heads) ** 0.5)
            attn = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1).mean(dim=1)[:, 0]
        return out, attn

    def _cls_attention(self, h_cls: torch.Tensor, h_tokens: torch.Tensor, valid: torch.Tensor):
        """Attention of the CLS query alone over the CLS and the gene tokens.

        With one query per head the key and value projections are folded into it instead of
        applied to every token: a head's scores are ``h @ (W_k^T q)`` and its output is
        ``W_v (p^T h)``, so the tokens meet only ``(d, heads)``-sized matrices, ``O(L d
        heads)`` work instead of the ``O(L d^2)`` of projecting every token. The key bias
        shifts every score of a head alike (the softmax cancels it) and the value bias adds
        ``b_v`` times the attention's sum. Returns the ``(B, 1, d)`` output and the
        attention ``(B, L + 1, heads)``, CLS first.
        """
        d, heads = h_cls.shape[-1], self.n_heads
        e = d // heads
        w, b = self.in_proj.weight, self.in_proj.bias
        q = (F.linear(h_cls[:, 0], w[:d], b[:d]) * e**-0.5).view(-1, heads, e)
        # (B, d, heads): column h is W_k[h]^T q[:, h], the query read in the tokens' space
        query = torch.bmm(q.transpose(0, 1), w[d : 2 * d].view(heads, e, d)).permute(1, 2, 0)
        scores = torch.cat([torch.bmm(h_cls, query), torch.bmm(h_tokens, query)], dim=1)
        keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        attn = scores.masked_fill(~keep.unsqueeze(-1), float("-inf")).softmax(dim=1)
        p = F.dropout(attn, self.dropout, self.training)
        pooled = torch.bmm(p[:, :1].transpose(1, 2), h_cls) + torch.bmm(p[:, 1:].transpose(1, 2), h_tokens)
        out = torch.bmm(pooled.transpose(0, 1), w[2 * d :].view(heads, e, d).transpose(1, 2)).transpose(0, 1)
        out = out + b[2 * d :].view(heads, e) * p.sum(dim=1).unsqueeze(-1)
        return self.out_proj(out.reshape(-1, 1, d)), attn

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
            Compute the output of the CLS position only (keys and values from all tokens);
            see :meth:`cls_forward`.
        return_attention
            Also return the CLS query's attention over tokens, averaged over heads ``(B, L)``.
        """
        if cls_only:
            return self.cls_forward(x[:, :1], x[:, 1:], keep[:, 1:], return_attention=return_attention)
        a, attn = self._attention(self._attention_input(x), keep, return_attention)
        return self._after_attention(x, a), attn

    def _attention_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention reads: the normalised tokens (pre-LN) or the tokens (post-LN)."""
        return self.norm1(x) if self.norm_first else x

    def _after_attention(self, residual: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The residual connections, LayerNorms and feed-forward around the attention output ``a``."""
        if self.norm_first:
            y = residual + self.drop(a)
            return y + self.drop(self.ffn(self.norm2(y)))
        y = self.norm1(residual + self.drop(a))
        return self.norm2(y + self.drop(self.ffn(y)))

    def cls_forward(
        self, cls: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, *, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output at the CLS position only, from the CLS and the gene tokens apart.

        The same as ``forward(cat([cls, tokens]), keep)[:, :1]``, without concatenating the
        tokens or computing their outputs: the last block of the encoder needs no more.

        Parameters
        ----------
        cls
            ``(B, 1, d)`` CLS token.
        tokens
            ``(B, L, d)`` gene tokens.
        valid
            ``(B, L)`` True for real genes, False for padding.
        return_attention
            Also return the CLS attention over ``[CLS, genes]``, averaged over heads ``(B, L + 1)``.

        Examples
        --------
        >>> import torch
        >>> block = EncoderBlock(8, 2).eval()
        >>> x, keep = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
        >>> y, _ = block.cls_forward(x[:, :1], x[:, 1:], keep[:, 1:])
        >>> torch.allclose(y, block(x, keep)[0][:, :1], atol=1e-5)
        True
        """
        a, attn = self._cls_attention(self._attention_input(cls), self._attention_input(tokens), valid)
        return self._after_attention(cls, a), attn.mean(dim=-1) if return_attention else None


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
        cls, tokens = self.embedding.parts(gene_idx, values)
        if last > 0:  # full blocks before the last; the last computes the CLS output alone
            x = torch.cat([cls, tokens], dim=1)
            keep = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
            for block in self.blocks[:last]:
                x, _ = block(x, keep)
            cls, tokens = x[:, :1], x[:, 1:]
        if self.pooling == "cls_mean":
            w = valid.unsqueeze(-1).to(tokens.dtype)
            pooled = (self.pool_norm(tokens) * w).sum(1) / w.sum(1).clamp_min(1.0)
        out, attn = self.blocks[last].cls_forward(cls, tokens, valid, return_attention=return_attention)
        out = out[:, 0]
        if self.pooling == "cls_mean":
            out = out + self.pool_proj(pooled)
        if return_attention:
            return out, attn[:, 1:]
        return out
