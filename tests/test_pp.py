import numpy as np
import pytest
from scipy import sparse

import scrobust_sc as scrobust
from scrobust_sc.pp._dropout import dropout_counts


def test_dropout_removes_round_p_nnz_of_each_cell(small_pbmc):
    x = sparse.csr_matrix(small_pbmc.X)
    out = dropout_counts(x, 0.3, seed=1)
    before, after = np.diff(x.indptr), np.diff(out.indptr)
    np.testing.assert_array_equal(after, before - np.rint(0.3 * before).astype(int))
    # only zeros are introduced: every kept entry keeps its value
    kept = out.toarray()
    assert np.all((kept == 0) | (kept == x.toarray()))


def test_dropout_is_seeded_and_random_within_cells(small_pbmc):
    a = dropout_counts(small_pbmc.X, 0.5, seed=0)
    b = dropout_counts(small_pbmc.X, 0.5, seed=0)
    c = dropout_counts(small_pbmc.X, 0.5, seed=1)
    assert (a != b).nnz == 0 and (a != c).nnz > 0


def test_add_dropout_copies_by_default(small_pbmc):
    nnz = small_pbmc.X.nnz
    noisy = scrobust.pp.add_dropout(small_pbmc, 0.5)
    assert small_pbmc.X.nnz == nnz and noisy.X.nnz < nnz
    with pytest.raises(ValueError, match="dropout rate"):
        scrobust.pp.add_dropout(small_pbmc, 1.0)
