import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scrobust_sc.data import align_to_genes, looks_like_ensembl, reindex_matrix


def test_reindex_matches_a_dense_computation():
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(5, 6)).astype(np.float32)
    position = np.array([3, -1, 0, 5, -1])
    expected = np.zeros((5, 5), dtype=np.float32)
    for j, p in enumerate(position):
        if p >= 0:
            expected[:, j] = x[:, p]
    np.testing.assert_array_equal(reindex_matrix(x, position), expected)
    np.testing.assert_array_equal(reindex_matrix(sparse.csr_matrix(x), position).toarray(), expected)


def test_query_in_other_order_with_missing_genes_is_reported():
    q = ad.AnnData(sparse.csr_matrix(np.array([[1.0, 2.0, 3.0]])), var=pd.DataFrame(index=["c", "a", "x"]))
    aligned, report = align_to_genes(q, pd.Index(["a", "b", "c", "d"]))
    assert aligned.X.toarray().tolist() == [[2.0, 0.0, 1.0, 0.0]]
    assert report.n_found == 2 and report.share_missing == 0.5
    assert report.missing == ["b", "d"]
    assert q.var_names.tolist() == ["c", "a", "x"]  # the user's AnnData is untouched


def test_no_overlap_names_gene_symbols_as_the_fix():
    q = ad.AnnData(np.ones((1, 2)), var=pd.DataFrame(index=["ENSG00000141510", "ENSG00000012048"]))
    with pytest.raises(ValueError, match="gene_symbols="):
        align_to_genes(q, pd.Index(["TP53", "BRCA1"]))


def test_gene_symbols_column_is_used():
    var = pd.DataFrame({"symbol": ["TP53", "BRCA1"]}, index=["ENSG00000141510", "ENSG00000012048"])
    q = ad.AnnData(np.array([[1.0, 2.0]]), var=var)
    aligned, report = align_to_genes(q, pd.Index(["BRCA1", "TP53"]), gene_symbols="symbol")
    assert aligned.X.tolist() == [[2.0, 1.0]] and report.n_found == 2


def test_ensembl_detection():
    assert looks_like_ensembl(["ENSMUSG00000000001", "ENSMUSG00000000028"])
    assert not looks_like_ensembl(["Ins1", "Gcg"])
