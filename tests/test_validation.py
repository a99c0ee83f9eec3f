import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scrobust_sc import SCRobust
from scrobust_sc.data import check_finite_nonnegative, detect_input_kind


def _adata(x, names=None):
    names = names or [f"g{i}" for i in range(x.shape[1])]
    return ad.AnnData(x, var=pd.DataFrame(index=names))


def test_nan_is_refused():
    x = np.ones((3, 2))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SCRobust.setup_anndata(_adata(x))


def test_inf_is_refused_in_sparse():
    x = sparse.csr_matrix(np.array([[1.0, np.inf], [0, 2.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_finite_nonnegative(x)


def test_negative_values_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="negative.*raw counts"):
        SCRobust.setup_anndata(_adata(np.array([[1.0, -0.5], [2.0, 1.0]])))


def test_duplicated_genes_are_refused():
    with pytest.raises(ValueError, match="var_names_make_unique"):
        SCRobust.setup_anndata(_adata(np.ones((2, 2)), names=["A", "A"]))


def test_all_zero_matrix_is_refused():
    with pytest.raises(ValueError, match="no non-zero entry"):
        SCRobust.setup_anndata(_adata(sparse.csr_matrix((3, 4))))


def test_empty_anndata_is_refused():
    with pytest.raises(ValueError, match="empty"):
        SCRobust.setup_anndata(_adata(np.zeros((0, 3))))


def test_log_normalised_data_are_detected():
    x = np.log1p(np.array([[1.5, 0.0], [0.0, 2.5]]))
    assert detect_input_kind(x) is True
    a = _adata(x)
    SCRobust.setup_anndata(a)
    assert SCRobust(a, d_model=16, n_heads=2).module.input_is_log


def test_non_integer_counts_claim_is_refused():
    with pytest.raises(ValueError, match="declared as raw counts"):
        detect_input_kind(np.array([[0.5, 1.0]]), is_log_normalized=False)


def test_counts_claimed_as_log_are_refused():
    with pytest.raises(ValueError, match="look like counts"):
        detect_input_kind(np.array([[500.0, 1.0]]), is_log_normalized=True)


def test_normalised_but_not_logged_is_refused():
    with pytest.raises(ValueError, match="neither raw counts nor log-normalised"):
        detect_input_kind(np.array([[1234.5, 0.0]]))


def test_missing_labels_are_refused_with_the_fix(small_pbmc):
    small_pbmc.obs["cell_type"] = small_pbmc.obs["cell_type"].astype(object)
    small_pbmc.obs.iloc[0, small_pbmc.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(ValueError, match="missing labels.*fillna"):
        SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")


def test_unknown_labels_are_refused_when_another_category_marks_unlabelled_cells(small_pbmc):
    """ "Unknown" is the call for novel cells: with unlabeled_category="x" it would be taught as a type."""
    small_pbmc.obs["cell_type"] = small_pbmc.obs["cell_type"].astype(object)
    small_pbmc.obs.iloc[:3, small_pbmc.obs.columns.get_loc("cell_type")] = "Unknown"
    with pytest.raises(ValueError, match=r"3 cells labelled 'Unknown'.*unlabeled_category='Unknown'"):
        SCRobust.setup_anndata(small_pbmc, labels_key="cell_type", unlabeled_category="unlabelled")
    SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")  # the default marks them unlabelled
    model = SCRobust(small_pbmc, d_model=16, n_heads=2)
    assert "Unknown" not in model.cell_types_


def test_unknown_obs_key_is_refused(small_pbmc):
    with pytest.raises(ValueError, match="not a column of adata.obs"):
        SCRobust.setup_anndata(small_pbmc, labels_key="celltype")


def test_missing_layer_is_refused(small_pbmc):
    with pytest.raises(ValueError, match="not in adata.layers"):
        SCRobust.setup_anndata(small_pbmc, layer="counts")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_matrix_types_are_accepted(small_pbmc, dtype, fmt):
    if dtype == np.float16 and fmt != "dense":
        pytest.skip("scipy.sparse has no float16")
    dense = small_pbmc.X.toarray().astype(dtype)
    x = {"dense": lambda m: m, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt](dense)
    a = ad.AnnData(x, var=small_pbmc.var)
    SCRobust.setup_anndata(a)
    model = SCRobust(a, d_model=16, n_heads=2)
    z = model.get_latent_representation(n_genes=50)
    assert z.shape == (a.n_obs, 16) and np.isfinite(z).all()


def test_cells_without_expressed_genes_are_embedded(small_pbmc):
    x = small_pbmc.X.tolil()
    x[0, :] = 0
    small_pbmc.X = x.tocsr()
    SCRobust.setup_anndata(small_pbmc)
    z = SCRobust(small_pbmc, d_model=16, n_heads=2).get_latent_representation(n_genes=50)
    assert np.isfinite(z).all()
