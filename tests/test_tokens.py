import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scrobust_sc.nn import sample_random_genes, select_mixed_genes, select_ranked_genes, trim_padding

masks = arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 30)))


@settings(max_examples=60, deadline=None)
@given(mask=masks, n=st.integers(1, 40))
def test_random_views_only_hold_expressed_genes(mask, n):
    expressed = torch.as_tensor(mask)
    idx, valid = sample_random_genes(expressed, n)
    for row in range(mask.shape[0]):
        chosen = idx[row][valid[row]].tolist()
        assert all(mask[row, g] for g in chosen)
        assert len(set(chosen)) == len(chosen)  # without replacement
        assert len(chosen) == min(n, int(mask[row].sum()))
        # valid positions come first: padding is only at the end
        v = valid[row].tolist()
        assert v == sorted(v, reverse=True)


@settings(max_examples=60, deadline=None)
@given(mask=masks, n=st.integers(1, 40), seed=st.integers(0, 1000))
def test_ranked_selection_respects_score_order(mask, n, seed):
    rng = np.random.default_rng(seed)
    score = torch.as_tensor(rng.permutation(mask.shape[1]).astype(np.float32))
    idx, valid = select_ranked_genes(torch.as_tensor(mask), score, n)
    for row in range(mask.shape[0]):
        chosen = idx[row][valid[row]].tolist()
        expressed = np.flatnonzero(mask[row])
        expected = sorted(expressed, key=lambda g: -score[g].item())[:n]
        assert chosen == expected


@settings(max_examples=40, deadline=None)
@given(mask=masks, n=st.integers(1, 40), seed=st.integers(0, 1000))
def test_mixed_selection_is_distinct_expressed_genes(mask, n, seed):
    rng = np.random.default_rng(seed)
    values = torch.as_tensor(rng.random(mask.shape).astype(np.float32)) * torch.as_tensor(mask)
    score = torch.as_tensor(rng.random(mask.shape[1]).astype(np.float32))
    idx, valid = select_mixed_genes(torch.as_tensor(mask), values, score, n)
    for row in range(mask.shape[0]):
        chosen = idx[row][valid[row]].tolist()
        assert len(set(chosen)) == len(chosen)
        assert all(mask[row, g] for g in chosen)
        assert len(chosen) == min(min(n, mask.shape[1]), int(mask[row].sum()))


def test_mixed_takes_unique_then_most_expressed():
    mask = torch.ones(1, 6, dtype=torch.bool)
    values = torch.tensor([[9.0, 8.0, 0.1, 0.2, 0.3, 7.0]])
    score = torch.tensor([0.0, 0.0, 0.9, 0.8, 0.1, 0.0])
    idx, valid = select_mixed_genes(mask, values, score, 4)
    assert idx[0].tolist() == [2, 3, 0, 1]


def test_trim_padding_keeps_every_real_token():
    idx = torch.tensor([[4, 2, 0, 0], [1, 0, 0, 0]])
    valid = torch.tensor([[True, True, False, False], [True, False, False, False]])
    t_idx, t_valid = trim_padding(idx, valid)
    assert t_idx.shape == (2, 2)
    assert t_valid.sum() == valid.sum()
