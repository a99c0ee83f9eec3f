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


def _first_by_key_then_position(keys: torch.Tensor, n: int) -> torch.Tensor:
    return torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :n]


def test_tied_genes_are_chosen_by_position_so_that_every_device_chooses_the_same():
    """Among genes of equal score or expression, the lower position first.

    ``torch.topk`` breaks ties its own way, one way on the CPU and another on a GPU: a
    model trained on an H100 gave 1% of its probabilities otherwise on the CPU.
    """
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(8, 2000))  # counts of 1 and 2: ties everywhere
    mask, values = torch.as_tensor(x > 0), torch.as_tensor(x, dtype=torch.float32)
    score = torch.as_tensor(rng.integers(0, 4, x.shape[1]), dtype=torch.float32)
    score_keys = score.expand(mask.shape).masked_fill(~mask, float("-inf"))
    idx, valid = select_ranked_genes(mask, score, 300)
    assert valid.all() and idx.tolist() == _first_by_key_then_position(score_keys, 300).tolist()
    idx, valid = select_mixed_genes(mask, values, score, 300)
    by_score = _first_by_key_then_position(score_keys, 150)
    taken = torch.zeros_like(mask).scatter_(1, by_score, True)
    by_value = _first_by_key_then_position(values.masked_fill(~mask | taken, float("-inf")), 150)
    assert valid.all() and idx.tolist() == torch.cat([by_score, by_value], dim=1).tolist()


# ---- batch composition: a cell's tokens and embedding do not depend on the other cells
counts = arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(2, 25)), elements=st.integers(0, 4))


@settings(max_examples=50, deadline=None)
@given(x=counts, n=st.integers(1, 30), seed=st.integers(0, 1000))
def test_selection_of_a_cell_does_not_depend_on_the_batch(x, n, seed):
    rng = np.random.default_rng(seed)
    mask = torch.as_tensor(x > 0)
    score = torch.as_tensor(rng.permutation(x.shape[1]).astype(np.float32))
    values = torch.as_tensor(x * 10 + rng.permutation(x.size).reshape(x.shape) / x.size, dtype=torch.float32)
    for select in (
        lambda m, v: select_ranked_genes(m, score, n),
        lambda m, v: select_mixed_genes(m, v, score, n),
    ):
        idx, valid = select(mask, values)
        for row in range(x.shape[0]):
            one_idx, one_valid = select(mask[row : row + 1], values[row : row + 1])
            assert idx[row][valid[row]].tolist() == one_idx[0][one_valid[0]].tolist()
            assert all(mask[row, g] for g in idx[row][valid[row]].tolist())  # only the cell's non-zero genes


_MODULES: dict = {}


def _module(n_genes: int):
    from scrobust_sc.module import SCRobustModule

    if n_genes not in _MODULES:
        torch.manual_seed(n_genes)
        module = SCRobustModule(n_genes, d_model=16, n_heads=2, n_layers=2, n_view_genes=8).eval()
        module.unique_score.copy_(torch.rand(n_genes))
        _MODULES[n_genes] = module
    return _MODULES[n_genes]


@settings(max_examples=50, deadline=None)
@given(x=counts, n=st.integers(1, 30), selection=st.sampled_from(["unique", "mixed", "expressed"]))
def test_a_cells_embedding_does_not_depend_on_the_batch(x, n, selection):
    """Other cells change the padded length of the batch; padding must never reach the output."""
    module = _module(x.shape[1])
    batch = {"X": torch.as_tensor(x, dtype=torch.float32)}
    with torch.inference_mode():
        together = module.inference(batch, gene_selection=selection, n_genes=n)["z"]
        for row in range(x.shape[0]):
            alone = module.inference({"X": batch["X"][row : row + 1]}, gene_selection=selection, n_genes=n)["z"]
            torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-5, atol=1e-5)
