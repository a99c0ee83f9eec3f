"""The linear expert: a converged logistic regression whose logits join the network's."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import scrobust_sc as scrobust
from scrobust_sc.data._splits import stratified_validation_split
from scrobust_sc.model import fit_linear_expert
from scrobust_sc.model._linear_expert import ABSENT_TYPE_LOGIT, expert_features, expert_rows

from .conftest import fine_tuned
from .test_model_files import FIXTURE


def _log_normalized(adata):
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out.X.toarray() if hasattr(out.X, "toarray") else np.asarray(out.X)


def test_the_expert_is_sklearns_logistic_regression_on_scaled_clipped_values(small_pbmc):
    x = _log_normalized(small_pbmc)
    labels = small_pbmc.obs["cell_type"].astype("category")
    codes = labels.cat.codes.to_numpy()
    genes = np.zeros(x.shape[1], dtype=bool)
    genes[:300] = True
    weight, bias, scale = fit_linear_expert(x, codes, len(labels.cat.categories) + 1, genes)
    scaled = np.minimum(StandardScaler(with_mean=False).fit_transform(x[:, genes]), 10.0)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(scaled, codes)
    logits = expert_features(x, scale) @ weight + bias
    k = len(labels.cat.categories)
    # the same optimum up to the solver's tolerance (sparse and dense inputs stop a little apart)
    np.testing.assert_allclose(logits[:, :k], reference.decision_function(scaled), atol=0.1)
    np.testing.assert_array_equal(logits.argmax(1), reference.predict(scaled))
    assert (scale[~genes] == 0).all() and (logits[:, k] == ABSENT_TYPE_LOGIT).all()  # masked genes, absent type


def test_two_types_give_logits_of_the_same_decision():
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1], 40)
    x = np.log1p(rng.poisson(1.0, (80, 6)).astype(float))
    x[codes == 1, 2] += 1.5
    weight, bias, scale = fit_linear_expert(x, codes, 2)
    logits = expert_features(x, scale) @ weight + bias
    reference = LogisticRegression(max_iter=1000).fit(expert_features(x, scale), codes)
    np.testing.assert_array_equal(logits.argmax(1), reference.predict(expert_features(x, scale)))
    with pytest.raises(ValueError, match="at least 2 types"):
        fit_linear_expert(x, np.zeros(80, dtype=int), 2)


def test_a_capped_subset_keeps_every_type():
    """A plain random subset could lose a rare type, which the expert would then veto."""
    codes = np.repeat([0, 1, 2, 3], [5000, 800, 40, 1])
    rows = expert_rows(codes, 1000, seed=1)
    counts = np.bincount(codes[rows], minlength=4)
    assert rows.size <= 1000 and (np.diff(rows) > 0).all()
    assert counts[2:].tolist() == [40, 1] and counts[0] == counts[1] > 400  # large types capped alike
    np.testing.assert_array_equal(expert_rows(codes[:900], 1000), np.arange(900))


def test_fine_tuning_refits_the_expert_on_every_labelled_cell(small_pbmc, seeded):
    """Fitted first on the network's training cells (for the novelty calibration), then on all of them."""
    model = fine_tuned(small_pbmc)
    assert model.module.has_linear_expert and model.train_params_["train"]["linear_expert"]
    codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
    train, validation = stratified_validation_split(codes, 0.1, seed=scvi.settings.seed or 0)
    assert validation.size > 0
    mask = getattr(model.module, "gene_linear_mask", None)
    genes = None if mask is None else mask.numpy() > 0
    with torch.inference_mode():
        batch = next(iter(model._batches(small_pbmc, None, 256)))
        # the values the model's own fit read (float32 log1p of its normalisation): the solver
        # then sees the same numbers, so its stopping point cannot differ between machines
        x = sparse.csr_matrix(torch.log1p(model.module._normalized(batch)).numpy())
        with_expert = model._classify_batch(batch)[0]
        expert = model.module.expert_logits(model.module._normalized(batch))
        model.module.clear_linear_expert()
        without = model._classify_batch(batch)[0]
    assert x.shape[0] == codes.size

    def expert_fitted_on(cells):
        weight, bias, scale = fit_linear_expert(x[cells], codes[cells], model.module.n_labels, genes)
        return expert_features(x, scale) @ weight + bias

    expected, training_only = expert_fitted_on(np.arange(codes.size)), expert_fitted_on(np.sort(train))
    np.testing.assert_allclose(expert.numpy(), expected, atol=1e-3)
    assert np.abs(expert.numpy() - training_only).max() > 100 * np.abs(expert.numpy() - expected).max()
    torch.testing.assert_close(with_expert, without + expert)


def test_the_expert_can_be_turned_off(small_pbmc, seeded):
    model = fine_tuned(small_pbmc, linear_expert=False)
    assert not model.module.has_linear_expert and not model.train_params_["train"]["linear_expert"]


def test_the_expert_survives_save_and_load(small_pbmc, tmp_path, seeded):
    model = fine_tuned(small_pbmc)
    model.save(tmp_path / "m")
    loaded = scrobust.SCRobust.load(tmp_path / "m")
    torch.testing.assert_close(loaded.module.expert_weight, model.module.expert_weight)
    np.testing.assert_allclose(
        loaded.predict(small_pbmc, soft=True).to_numpy(), model.predict(small_pbmc, soft=True).to_numpy(), rtol=1e-5
    )


def test_a_model_saved_before_the_expert_predicts_without_it():
    model = scrobust.SCRobust.load(FIXTURE / "model_v0.1.0")
    cells = ad.read_h5ad(FIXTURE / "model_v0.1.0_cells.h5ad")
    assert not model.module.has_linear_expert
    assert np.isfinite(model.predict(cells, soft=True).to_numpy()).all()
