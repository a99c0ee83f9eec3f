"""The published scRobust encoder's costs, re-implemented to time it beside this package.

Issue 6 states the published implementation's cells/s on "a machine like yours". Its
speed goals are ratios "in one run on the same machine", so ``benchmarks/throughput.py
--reference`` also times this stand-in in the same run. It is written from
``shared/METHOD.md`` and the issue's account of where the published code spends its time,
not from that code:

- tokens ``x[c, g] W[g] / ||W[g]||``; a summary token (value 1) first; sequences padded to
  ``k`` with MASK tokens of value 0, attended to (no mask) and computed through the block;
- pre-LayerNorm blocks with a hand-written LayerNorm (``std`` with eps 1e-6) and tanh GELU,
  attention written out (scores, softmax, dropout, weighted sum) for every position;
- dropout at seven sites: the embedding; in each block the attention probabilities, both
  residual branches, the feed-forward's hidden layer and the block's output; the heads;
- pre-training views of ``n`` genes drawn with replacement from each cell's non-zero
  genes; NT-Xent (temperature 0.07) over the 2N views and the other view's expression
  predicted from the raw gene embeddings (mean squared error); Adam;
- fine-tuning on each cell's first ``k`` non-zero genes by fraction of zeros, padded to
  ``k``; a 2-layer classifier; Adam;
- embeddings from the summary token with gradients recorded (no ``no_grad``).

Run on its own for one figure (``--phase``), or through ``throughput.py --reference``:

    .venv/bin/python benchmarks/published_reference.py --phase finetune \
        --data ../shared/data/zheng_sorted_pbmc_fasttopics.h5ad
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Special tokens as in the published vocabulary: PAD, SEP, UNKNOWN, CLS (summary), MASK.
N_SPECIAL, CLS, MASK = 5, 3, 4
#: The paper's sizes and the batch sizes of issue 6's reference figures.
SIZES = {"d_model": 512, "n_heads": 8, "n_layers": 1}
PHASES = {
    "pretrain": {"batch_size": 128, "n_genes": 200},
    "finetune": {"batch_size": 64, "n_genes": 800},
    "embed": {"batch_size": 64, "n_genes": 1000},
}


def layer_norm(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm written out with the standard deviation, as hand-written encoders do."""
    mean = x.mean(-1, keepdim=True)
    return gain * (x - mean) / (x.std(-1, keepdim=True) + eps) + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU, element by element."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class Block(nn.Module):
    """A pre-LayerNorm Transformer block computed for every position, padding included."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.qkv = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.norm = nn.ParameterList([nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))] * 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = (lin(x).view(b, length, self.heads, -1).transpose(1, 2) for lin in self.qkv)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        weights = F.dropout(scores.softmax(-1), self.p, self.training)
        return self.out((weights @ v).transpose(1, 2).reshape(b, length, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.attention(layer_norm(x, self.norm[0], self.norm[1])), self.p, self.training)
        hidden = F.dropout(gelu(self.ff1(layer_norm(x, self.norm[2], self.norm[3]))), self.p, self.training)
        x = x + F.dropout(self.ff2(hidden), self.p, self.training)
        return F.dropout(x, self.p, self.training)


def head(d: int, out: int, dropout: float) -> nn.Sequential:
    """The 2-layer heads: Linear - ELU - Dropout - Linear."""
    return nn.Sequential(nn.Linear(d, d), nn.ELU(), nn.Dropout(dropout), nn.Linear(d, out))


class PublishedModel(nn.Module):
    """Gene embeddings, the encoder and the pre-training and classification heads."""

    def __init__(self, n_genes: int, n_classes: int, d_model: int, n_heads: int, n_layers: int, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(n_genes + N_SPECIAL, d_model, padding_idx=0)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.p = dropout
        self.contrastive, self.expression = head(d_model, d_model, dropout), head(d_model, d_model, dropout)
        self.classifier = head(d_model, n_classes, dropout)

    def forward(self, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Every position's output; the summary token's is ``[:, 0]``."""
        w = self.embedding(tokens)
        x = F.dropout(values.unsqueeze(-1) * w / w.norm(dim=-1, keepdim=True), self.p, self.training)
        for block in self.blocks:
            x = block(x)
        return x


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's loss over the 2N views: each view's positive is the other view of its cell."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def normalized_rows(x, rows: np.ndarray) -> torch.Tensor:
    """Dense ``log1p`` of counts normalised to 10,000 per cell, for a batch's rows."""
    dense = torch.as_tensor(np.asarray(x[rows].todense() if hasattr(x, "todense") else x[rows]), dtype=torch.float32)
    return torch.log1p(dense / dense.sum(1, keepdim=True).clamp_min(1) * 1e4)


def with_summary(genes: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the summary token (value 1) to each sequence of gene positions."""
    ones = torch.ones(len(genes), 1)
    return torch.cat([torch.full((len(genes), 1), CLS), genes + N_SPECIAL], 1), torch.cat([ones, values], 1)


def random_views(values: torch.Tensor, n: int, generator: torch.Generator):
    """Two views of ``n`` genes per cell, drawn with replacement from its non-zero genes."""
    weights = (values > 0).float()
    views = []
    for _ in range(2):
        genes = torch.multinomial(weights, n, replacement=True, generator=generator)
        views.append(with_summary(genes, values.gather(1, genes)))
    return views


def ranked_padded(values: torch.Tensor, zero_fraction: torch.Tensor, k: int):
    """Each cell's first ``k`` non-zero genes, most zeros first, padded to ``k`` with MASK."""
    key = torch.where(values > 0, zero_fraction, torch.full_like(values, -1.0))
    order = key.topk(k, dim=1).indices
    present = values.gather(1, order) > 0
    genes = torch.where(present, order + N_SPECIAL, torch.full_like(order, MASK))
    ones = torch.ones(len(values), 1)
    return torch.cat([torch.full((len(values), 1), CLS), genes], 1), torch.cat([ones, values.gather(1, order)], 1)


def measure(phase: str, x, labels: np.ndarray, steps: int, warmup: int, threads: int, seed: int = 0) -> dict:
    """Cells/s of ``phase`` over ``steps`` steps (batches, for embeddings) after ``warmup``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    batch, n = PHASES[phase]["batch_size"], PHASES[phase]["n_genes"]
    classes, codes = np.unique(labels, return_inverse=True)
    model = PublishedModel(x.shape[1], len(classes), **SIZES)
    model.train(phase != "embed")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
    nnz = np.diff(x.indptr) if hasattr(x, "indptr") else (np.asarray(x) > 0).sum(1)
    zero_fraction = torch.as_tensor(1 - np.bincount(x.indices, minlength=x.shape[1]) / x.shape[0], dtype=torch.float32)
    cells = 0
    for step in range(warmup + steps):
        if step == warmup:
            start, cells = time.perf_counter(), 0
        rows = rng.choice(x.shape[0], batch, replace=False)
        values = normalized_rows(x, rows)
        if phase == "pretrain":
            (g1, v1), (g2, v2) = random_views(values, n, generator)
            h = model(torch.cat([g1, g2]), torch.cat([v1, v2]))[:, 0]
            loss = nt_xent(model.contrastive(h[:batch]), model.contrastive(h[batch:]))
            predicted = (model.expression(h[:batch]).unsqueeze(1) * model.embedding(g2[:, 1:])).sum(-1)
            loss = loss + F.mse_loss(predicted, v2[:, 1:])
        else:
            genes, vals = ranked_padded(values, zero_fraction, n)
            h = model(genes, vals)[:, 0]
            if phase == "embed":
                h.detach().numpy()
                cells += batch
                continue
            loss = F.cross_entropy(model.classifier(h), torch.as_tensor(codes[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        cells += batch
    seconds = time.perf_counter() - start
    return {
        "phase": phase,
        "implementation": "published (re-implemented: benchmarks/published_reference.py)",
        **SIZES,
        "batch_size": batch,
        "genes_per_cell": n,
        "median_nonzero_genes_per_cell": float(np.median(nnz)),
        "timed_steps": steps,
        "cells_per_s": cells / seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=list(PHASES), required=True)
    parser.add_argument("--data", default="../shared/data/zheng_sorted_pbmc_fasttopics.h5ad")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(args.data)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    x.sum_duplicates()
    figures = measure(args.phase, x, adata.obs[args.labels_key].to_numpy(), args.steps, args.warmup, args.threads)
    print("RESULT " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
