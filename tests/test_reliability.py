"""Issue #5, reliability: the bad-input catalogue and the memory budget.

Cases already covered elsewhere are listed in docs/reliability.md with their test; this
file holds the rest. Every case expects a clear error naming the fix, or correct handling.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

import scrobust_sc as scrobust
from scrobust_sc import SCRobust
from scrobust_sc.data import DenseBudgetError, check_dense_budget

from .conftest import QUIET, TINY, demo_subset


@pytest.fixture(scope="module")
def cells():
    """60 demo cells x 200 genes, raw counts (CSR)."""
    return demo_subset(60, 200)


@pytest.fixture(scope="module")
def model(cells):
    """An untrained TINY model registered on a copy of ``cells``."""
    scvi.settings.seed = 0
    a = cells.copy()
    SCRobust.setup_anndata(a)
    return SCRobust(a, **TINY)


@pytest.fixture
def budget():
    """Restore the dense-memory budget after a test lowers it."""
    yield scrobust.settings
    scrobust.settings.reset()


def _log_normalised(a: ad.AnnData) -> ad.AnnData:
    out = a.copy()
    out.X = out.X.astype(np.float32)
    library = np.asarray(out.X.sum(1)).ravel()
    out.X = sparse.csr_matrix(sparse.diags(1e4 / library) @ out.X)
    out.X.data = np.log1p(out.X.data)
    return out


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_query_is_refused(model, cells, bad):
    q = cells.copy()
    q.X = q.X.astype(np.float32)
    q.X.data[3] = bad
    with pytest.raises(ValueError, match="the query's expression matrix contains 1 NaN or infinite"):
        model.get_latent_representation(q)


def test_negative_values_in_a_query_are_refused(model, cells):
    q = cells.copy()
    q.X = q.X.astype(np.float32)
    q.X.data[0] = -1.0
    with pytest.raises(ValueError, match="negative values.*sc.pp.scale"):
        model.get_latent_representation(q)


def test_non_integer_values_declared_as_counts_are_refused_at_setup(cells):
    a = cells.copy()
    a.X = a.X.astype(np.float32) * 0.5
    with pytest.raises(ValueError, match="declared as raw counts but holds non-integer values"):
        SCRobust.setup_anndata(a, is_log_normalized=False)


def test_log_normalised_data_declared_as_counts_are_refused(cells):
    with pytest.raises(ValueError, match="declared as raw counts.*is_log_normalized=True"):
        SCRobust.setup_anndata(_log_normalised(cells), is_log_normalized=False)


def test_counts_declared_as_log_normalised_are_refused(cells):
    with pytest.raises(ValueError, match="is_log_normalized=True but adata.X reaches .* look like counts"):
        SCRobust.setup_anndata(cells.copy(), is_log_normalized=True)


def test_a_counts_query_for_a_log_normalised_model_is_refused(cells):
    ref = _log_normalised(cells)
    SCRobust.setup_anndata(ref)
    log_model = SCRobust(ref, **TINY)
    assert log_model.module.input_is_log
    with pytest.raises(ValueError, match="look like counts"):
        log_model.get_latent_representation(cells.copy())


def test_a_gene_expressed_in_no_cell_is_never_an_input_token(cells):
    a = cells.copy()
    x = a.X.tolil()
    x[:, 5] = 0
    a.X = x.tocsr()
    SCRobust.setup_anndata(a)
    m = SCRobust(a, **TINY)
    assert m.module.unique_score[5] == 1.0 and m.module.hvg_score[5] == 0.0
    attention = m.get_attention(n_genes=1000)
    assert attention[:, 5].nnz == 0  # ranked first by uniqueness, but never chosen: it is not expressed
    assert np.isfinite(m.get_latent_representation()).all()


def test_a_query_of_all_zero_cells_is_embedded_from_the_cls_token(model, cells):
    q = cells[:5].copy()
    q.X = sparse.csr_matrix(q.shape, dtype=np.float32)
    z = model.get_latent_representation(q)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z, np.broadcast_to(z[0], z.shape), rtol=1e-4, atol=1e-6)  # nothing tells the cells apart


# ---------------------------------------------------------------- gene names
def test_duplicated_gene_names_in_a_query_are_refused(model, cells):
    q = cells.copy()
    q.var_names = [cells.var_names[0], *cells.var_names[:-1]]
    with pytest.raises(ValueError, match="query's gene names contains 1 duplicated.*var_names_make_unique"):
        model.get_latent_representation(q)


def test_ensembl_ids_where_the_model_has_symbols_suggest_gene_symbols(model, cells):
    q = cells.copy()
    q.var["symbol"] = q.var_names.to_numpy()
    q.var_names = q.var["gene_ids"].to_numpy()
    with pytest.raises(ValueError, match="look like Ensembl IDs.*gene_symbols="):
        model.get_latent_representation(q)
    aligned, report = model.align_query(q, gene_symbols="symbol")  # the suggested fix works
    assert report.n_found == cells.n_vars
    np.testing.assert_array_equal(model.get_latent_representation(aligned), model.get_latent_representation(cells))


def test_no_gene_overlap_is_refused(model, cells):
    q = cells.copy()
    q.var_names = [f"gene{i}" for i in range(q.n_vars)]
    with pytest.raises(ValueError, match="Only 0 of the model's 200 genes are in the query"):
        model.get_latent_representation(q)


# ---------------------------------------------------------------- obs keys, shapes, containers
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a, m: SCRobust.setup_anndata(a, batch_key="donor"), "'donor' is not a column of adata.obs"),
        (lambda a, m: SCRobust.setup_anndata(a, gene_symbols="symbol"), "gene_symbols='symbol' is not a column"),
        (lambda a, m: scrobust.tl.marker_genes(a, m, groupby="donor"), "groupby='donor' is not a column"),
        (lambda a, m: m.get_attention(a, groups=a.obs["cell_type"][:3]), "groups has 3 entries for 60 cells"),
    ],
    ids=["batch_key", "gene_symbols", "marker_groupby", "attention_groups"],
)
def test_keys_that_do_not_exist_are_refused(model, cells, call, message):
    with pytest.raises(ValueError, match=message):
        call(cells.copy(), model)


def test_an_anndata_without_genes_is_refused(cells):
    with pytest.raises(ValueError, match="empty \\(60 cells x 0 genes\\)"):
        SCRobust.setup_anndata(cells[:, :0].copy())


def test_a_query_without_cells_is_refused(model, cells):
    with pytest.raises(ValueError, match="query AnnData has no cells"):
        model.get_latent_representation(cells[:0].copy())


def test_setup_on_a_view_asks_for_a_copy(cells):
    with pytest.raises(ValueError, match="adata.copy()"):
        SCRobust.setup_anndata(cells[:30])


def test_a_view_is_embedded_like_its_copy_and_stays_a_view(model, cells):
    view = cells[10:40]
    np.testing.assert_array_equal(model.get_latent_representation(view), model.get_latent_representation(view.copy()))
    assert view.is_view


@pytest.fixture
def backed_sparse(cells, tmp_path):
    cells.write_h5ad(tmp_path / "sparse.h5ad")
    a = ad.read_h5ad(tmp_path / "sparse.h5ad", backed="r")
    yield a
    a.file.close()


@pytest.fixture
def backed_dense(cells, tmp_path):
    d = cells.copy()
    d.X = d.X.toarray()
    d.write_h5ad(tmp_path / "dense.h5ad")
    a = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    yield a
    a.file.close()


def test_backed_anndata_cannot_be_set_up_for_training(backed_sparse):
    with pytest.raises(ValueError, match="Training needs the counts in memory.*not backed='r'"):
        SCRobust.setup_anndata(backed_sparse)


def test_backed_anndata_is_embedded_like_in_memory(model, cells, backed_sparse, backed_dense):
    expected = model.get_latent_representation(cells)
    np.testing.assert_array_equal(model.get_latent_representation(backed_sparse), expected)
    np.testing.assert_array_equal(model.get_latent_representation(backed_dense), expected)
    assert backed_sparse.isbacked and backed_dense.isbacked


def test_a_backed_dense_matrix_over_the_budget_is_refused(model, backed_dense, budget):
    budget.max_dense_bytes = 10_000  # 60 x 200 int32 = 48,000 bytes
    with pytest.raises(DenseBudgetError, match="Reading the backed .* dense query matrix .* sparse in the .h5ad"):
        model.get_latent_representation(backed_dense, batch_size=8)


# ---------------------------------------------------------------- sizes
def test_a_batch_size_larger_than_the_data(model, cells):
    np.testing.assert_allclose(  # batches padded to other lengths: float rounding only
        model.get_latent_representation(batch_size=10_000),
        model.get_latent_representation(batch_size=16),
        rtol=1e-5,
        atol=1e-6,
    )


def test_fine_tuning_with_a_batch_size_larger_than_the_data(cells, seeded, caplog):
    a = cells.copy()
    SCRobust.setup_anndata(a, labels_key="cell_type")
    m = SCRobust(a, **TINY)
    with caplog.at_level("INFO", logger="scrobust_sc"):
        m.train(max_epochs=1, batch_size=10_000, n_genes=32, **QUIET)
    assert "is larger than the" in caplog.text
    assert m.train_params_["train"]["batch_size"] < a.n_obs


def test_n_genes_larger_than_any_cells_non_zeros(model, cells):
    most = int(np.diff(cells.X.tocsr().indptr).max())
    for selection in ("unique", "mixed", "expressed"):
        np.testing.assert_allclose(  # the same tokens (tied scores may come in another order)
            model.get_latent_representation(gene_selection=selection, n_genes=100_000),
            model.get_latent_representation(gene_selection=selection, n_genes=most),
            rtol=1e-5,
            atol=1e-6,
        )


# ---------------------------------------------------------------- memory budget
def test_the_budget_message_names_operation_size_budget_and_fix():
    with pytest.raises(DenseBudgetError) as err:
        check_dense_budget(1000, 2000, np.float64, what="Densifying X", fix="Keep it sparse.", budget_bytes=1 << 20)
    message = str(err.value)
    for part in ("Densifying X", "1,000 x 2,000 float64", "15.3 MiB", "budget of 1.0 MiB", "Keep it sparse."):
        assert part in message
    assert isinstance(err.value, MemoryError) and isinstance(err.value, ValueError)


def test_the_budget_setting_is_checked(budget):
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="positive integer or None"):
            budget.max_dense_bytes = bad
    budget.max_dense_bytes = None
    assert check_dense_budget(10**6, 10**6, what="x", fix="y") == 4 * 10**12  # no limit


def test_an_inference_mini_batch_over_the_budget_is_refused(model, budget):
    budget.max_dense_bytes = 16 * 200 * 4  # 16 cells x 200 genes of float32
    assert model.get_latent_representation(batch_size=16).shape == (60, 32)
    with pytest.raises(DenseBudgetError, match="A mini-batch of 17 cells.*smaller batch_size="):
        model.get_latent_representation(batch_size=17)


def test_a_training_mini_batch_over_the_budget_is_refused(cells, budget):
    a = cells.copy()
    SCRobust.setup_anndata(a)
    m = SCRobust(a, **TINY)
    budget.max_dense_bytes = 8 * 200 * 4
    with pytest.raises(DenseBudgetError, match="A mini-batch of 16 cells"):
        m.pretrain(max_steps=1, batch_size=16, **QUIET)
    assert not getattr(m, "is_pretrained_", False)


def test_reordering_a_dense_query_over_the_budget_is_refused(model, cells, budget):
    q = cells[:, ::-1].copy()
    q.X = q.X.toarray()
    budget.max_dense_bytes = 10_000
    with pytest.raises(DenseBudgetError, match="Reordering a dense query.*scipy.sparse.csr_matrix"):
        model.get_latent_representation(q, batch_size=8)
    q.X = sparse.csr_matrix(q.X)  # the fix: sparse input stays sparse
    assert model.get_latent_representation(q, batch_size=8).shape == (60, 32)


def test_per_group_attention_over_the_budget_is_refused(model, cells, budget):
    budget.max_dense_bytes = 1000
    groups = pd.Series(np.arange(cells.n_obs).astype(str))  # one group per cell: 60 x 200 float64
    with pytest.raises(DenseBudgetError, match="per-group attention sums \\(60 groups\\).*fewer groups"):
        model.get_attention(cells, groups=groups, batch_size=2)


def test_a_marker_plot_over_the_budget_is_refused(model, cells, budget):
    import matplotlib

    matplotlib.use("Agg")
    a = cells.copy()
    scrobust.tl.marker_genes(a, model, groupby="cell_type", n_genes=5)
    budget.max_dense_bytes = 100
    with pytest.raises(DenseBudgetError, match="marker plot's cells x markers matrix"):
        scrobust.pl.attention_markers(a, groupby="cell_type")


# ---------------------------------------------------------------- determinism on CPU
def test_same_seed_gives_bit_identical_embeddings_and_predictions_after_fine_tuning(cells):
    runs = []
    for _ in range(2):
        scvi.settings.seed = 3
        a = cells.copy()
        SCRobust.setup_anndata(a, labels_key="cell_type")
        m = SCRobust(a, **TINY)
        m.pretrain(max_steps=3, batch_size=16, **QUIET)
        m.train(max_epochs=2, n_genes=32, batch_size=16, **QUIET)
        runs.append((m.get_latent_representation(), m.predict_proba().to_numpy(), m.predict_novelty(), m.history))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    for key in runs[0][3]:
        np.testing.assert_array_equal(runs[0][3][key].to_numpy(), runs[1][3][key].to_numpy())


def test_a_non_numeric_matrix_is_refused(cells):
    a = ad.AnnData(np.full((3, 2), "1", dtype=object), var=pd.DataFrame(index=["g0", "g1"]))
    with pytest.raises(ValueError, match="has dtype object; pass a numeric matrix of counts"):
        SCRobust.setup_anndata(a)
