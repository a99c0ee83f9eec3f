"""Token selection on dense mini-batch tensors, on the batch's device.

Every function works on a whole mini-batch at once (no Python loop over cells).
A selection returns gene indices ``(B, L)`` and a validity mask ``(B, L)``;
invalid positions are padding and must be masked by the encoder.
"""

from __future__ import annotations

import torch

from scrobust_sc._constants import TARGET_SUM


def normalize_batch(x: torch.Tensor, *, input_is_log: bool, target_sum: float = TARGET_SUM) -> torch.Tensor:
    """Return counts scaled to ``target_sum`` per cell (before the log).

    Parameters
    ----------
    x
        ``(B, G)`` raw counts, or ``log1p`` of normalised counts when ``input_is_log``.
    input_is_log
        Whether ``x`` is already ``log1p(normalize_total(counts))``, at any library size
        (scanpy's default is the median library): ``expm1`` of it is rescaled to
        ``target_sum``, as counts are.
    target_sum
        Library size after normalisation.

    Returns
    -------
    ``(B, G)`` normalised, not yet log-transformed, values. Cells with no counts stay zero.

    Examples
    --------
    >>> import torch
    >>> normalize_batch(torch.tensor([[1.0, 3.0]]), input_is_log=False)
    tensor([[2500., 7500.]])
    """
    if input_is_log:  # back to normalised values, brought to target_sum whatever size they were scaled to
        x = torch.expm1(x)
    library = x.sum(dim=1, keepdim=True).clamp_min(1e-8)
    return x / library * target_sum


def normalize_atac_batch(x: torch.Tensor, idf: torch.Tensor | None = None, *, target_sum: float = TARGET_SUM):
    """Peak values before the log: 1 per accessible peak, or ``tf * idf * target_sum``.

    The ATAC counterpart of :func:`normalize_batch`: ``log1p`` of the result is what the
    model sees (``log1p(1)`` for a binary peak; the TF-IDF of Stuart et al. 2019 with ``idf``).

    Parameters
    ----------
    x
        ``(B, P)`` peak counts or 0/1.
    idf
        ``(P,)`` inverse document frequency of the training data; ``None``: binary values.
    target_sum
        Scale factor of the TF-IDF.

    Returns
    -------
    ``(B, P)`` values, zero where a peak is not accessible.

    Examples
    --------
    >>> import torch
    >>> normalize_atac_batch(torch.tensor([[0.0, 3.0]]))
    tensor([[0., 1.]])
    >>> normalize_atac_batch(torch.tensor([[1.0, 3.0]]), torch.tensor([1.0, 4.0]), target_sum=1.0)
    tensor([[0.5000, 2.0000]])
    """
    binary = (x > 0).to(torch.float32)
    if idf is None:
        return binary
    n_accessible = binary.sum(dim=1, keepdim=True).clamp_min(1.0)
    return binary / n_accessible * idf.to(binary) * target_sum


def _top_positions(keys: torch.Tensor, n: int, *, ties_by_position: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``n`` largest keys per row, equal keys by lower position; ``-inf`` marks padding.

    ``torch.topk`` breaks ties one way on the CPU and another on a GPU, so equal keys (the
    counts of a cell, often equal) are made distinct first: each float32 key is mapped to
    an int32 of the same order and its position appended below it in an int64. The choice
    is then the same on every device. ``ties_by_position=False`` skips this (random keys,
    which are drawn differently on each device anyway and almost never tie).

    Examples
    --------
    >>> import torch
    >>> idx, valid = _top_positions(torch.tensor([[1.0, 2.0, 2.0, float("-inf"), 2.0]]), 4)
    >>> idx.tolist(), valid.tolist()
    ([[1, 2, 4, 0]], [[True, True, True, True]])
    """
    n = min(n, keys.shape[1])
    if not ties_by_position:
        top_keys, idx = torch.topk(keys, n, dim=1, sorted=True)
        return idx, torch.isfinite(top_keys)
    if keys.device.type == "mps":  # Apple GPUs: int64 top-k is not on every macOS version; the CPU chooses
        idx, valid = _top_positions(keys.cpu(), n)
        return idx.to(keys.device), valid.to(keys.device)
    if keys.shape[1] >= 2**31:
        raise ValueError(f"{keys.shape[1]} features: at most 2**31 - 1 can be ranked.")
    bits = keys.to(torch.float32).contiguous().view(torch.int32)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)  # negatives' bits flipped: int order = float order
    first = (2**31 - 1) - torch.arange(keys.shape[1], device=keys.device, dtype=torch.int64)
    idx = torch.topk(ordered.mul_(2**31).add_(first), n, dim=1, sorted=True).indices
    return idx, torch.isfinite(keys.gather(1, idx))


def sample_random_genes(expressed: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """Draw up to ``n`` distinct expressed genes per cell, uniformly at random.

    Sampling is without replacement (random keys then ``topk``, equivalent to
    ``torch.multinomial`` over the non-zero mask). A cell with fewer than ``n``
    expressed genes keeps all of them and the remaining positions are padding.

    Parameters
    ----------
    expressed
        ``(B, G)`` boolean mask of non-zero genes.
    n
        Number of genes per view.
    generator
        Optional random generator.

    Returns
    -------
    ``(idx, valid)``: ``(B, min(n, G))`` gene indices and validity mask.

    Examples
    --------
    >>> import torch
    >>> idx, valid = sample_random_genes(torch.tensor([[True, False, True]]), 2)
    >>> sorted(idx[0].tolist())
    [0, 2]
    """
    keys = torch.rand(expressed.shape, device=expressed.device, generator=generator)
    keys = keys.masked_fill(~expressed, float("-inf"))
    return _top_positions(keys, n, ties_by_position=False)


def select_ranked_genes(expressed: torch.Tensor, gene_score: torch.Tensor, n: int):
    """Each cell's first ``n`` expressed genes in the order of a global gene score.

    Parameters
    ----------
    expressed
        ``(B, G)`` boolean mask of non-zero genes.
    gene_score
        ``(G,)`` score shared by all cells, or ``(B, G)`` per cell; higher comes first
        (for highly unique genes: the fraction of
        zeros of the gene in the training data).
    n
        Genes per cell.

    Returns
    -------
    ``(idx, valid)`` as in :func:`sample_random_genes`, in score order.

    Examples
    --------
    >>> import torch
    >>> mask = torch.tensor([[True, True, False, True]])
    >>> idx, valid = select_ranked_genes(mask, torch.tensor([0.1, 0.9, 1.0, 0.5]), 2)
    >>> idx.tolist(), valid.tolist()
    ([[1, 3]], [[True, True]])
    """
    keys = gene_score.to(torch.float32).expand(expressed.shape).masked_fill(~expressed, float("-inf"))
    return _top_positions(keys, n)


def select_mixed_genes(expressed: torch.Tensor, values: torch.Tensor, gene_score: torch.Tensor, n: int):
    """Half of the genes by a global score (highly unique first), half by expression.

    The first ``n // 2`` positions are the cell's top genes by ``gene_score``; the rest
    are its most expressed genes among those not chosen yet.

    Examples
    --------
    >>> import torch
    >>> mask = torch.tensor([[True, True, True, True]])
    >>> vals = torch.tensor([[5.0, 0.1, 0.2, 3.0]])
    >>> idx, valid = select_mixed_genes(mask, vals, torch.tensor([0.0, 0.9, 0.8, 0.1]), 2)
    >>> idx.tolist()
    [[1, 0]]
    """
    n = min(n, expressed.shape[1])
    n_unique = n // 2
    idx_u, valid_u = select_ranked_genes(expressed, gene_score, n_unique)
    taken = torch.zeros_like(expressed)
    taken.scatter_(1, idx_u, valid_u)
    keys = values.to(torch.float32).masked_fill(~expressed | taken, float("-inf"))
    idx_e, valid_e = _top_positions(keys, n - n_unique)
    idx = torch.cat([idx_u, idx_e], dim=1)
    valid = torch.cat([valid_u, valid_e], dim=1)
    # valid positions first, so that trimming keeps every real token
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    return idx.gather(1, order), valid.gather(1, order)


def trim_padding(idx: torch.Tensor, valid: torch.Tensor, *others: torch.Tensor):
    """Cut the columns after the batch's longest real input.

    Requires the valid positions of each row to come first (as every selector here returns).

    Examples
    --------
    >>> import torch
    >>> idx, valid = trim_padding(torch.tensor([[3, 0, 0]]), torch.tensor([[True, False, False]]))
    >>> idx.tolist()
    [[3]]
    """
    length = int(valid.sum(dim=1).max().item()) if valid.numel() else 0
    length = max(length, 1)
    return (idx[:, :length], valid[:, :length], *(t[:, :length] for t in others))
