"""Novelty: the energy score calibrated on held-out cells, the distance score, and their maximum."""

import logging

import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scvi import REGISTRY_KEYS

import scrobust_sc as scrobust
from scrobust_sc.data._splits import stratified_validation_split
from scrobust_sc.module import SCRobustModule
from scrobust_sc.module._module import DISTANCE_NOVELTY_SCALE, ENERGY_QUANTILE

from .conftest import TINY, fine_tuned, same_type_neighbours


def _module(n_labels: int = 3) -> SCRobustModule:
    return SCRobustModule(20, n_labels, d_model=8, n_heads=2, n_view_genes=4).eval()


def test_energy_novelty_is_zero_at_the_median_and_one_at_the_quantile():
    torch.manual_seed(0)
    module = _module()
    logits = torch.randn(1001, 3) * 3
    module.set_energy_reference(logits)
    energy = -torch.logsumexp(logits, dim=1)
    novelty = module.energy_novelty(logits)
    assert novelty[energy.argsort()[500]].item() == pytest.approx(0.0, abs=1e-5)
    assert (novelty > 1).float().mean().item() == pytest.approx(1 - ENERGY_QUANTILE, abs=2e-3)
    # lower logits everywhere: higher energy, more novel
    assert (module.energy_novelty(logits - 5) > novelty).all()


def test_without_an_energy_reference_novelty_is_the_scaled_distance():
    """What models saved before the energy score get: the previous rule, novelty 1.2 now reads 1."""
    torch.manual_seed(0)
    module = _module()
    z, labels = torch.randn(30, 8), torch.arange(30) % 3
    module.set_reference(z, labels)
    query, logits = torch.randn(10, 8) * 3, torch.randn(10, 3)
    assert module.reference_energy.numel() == 0
    assert torch.equal(module.energy_novelty(logits), torch.zeros(10))
    expected = module.distance_novelty(query, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE
    torch.testing.assert_close(module.novelty(query, logits), expected)


def test_novelty_is_the_larger_of_its_two_scores():
    torch.manual_seed(0)
    module = _module()
    module.set_reference(torch.randn(30, 8), torch.arange(30) % 3)
    module.set_energy_reference(torch.randn(200, 3) * 2)
    query, logits = torch.randn(50, 8), torch.randn(50, 3) * 2
    distance = module.distance_novelty(query, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE
    energy = module.energy_novelty(logits)
    torch.testing.assert_close(module.novelty(query, logits), torch.maximum(distance, energy))
    assert (energy > distance).any() and (distance > energy).any()  # both scores matter here


def test_clearing_the_reference_drops_the_energy_calibration():
    module = _module()
    module.set_energy_reference(torch.randn(50, 3))
    module.clear_reference()
    assert module.reference_energy.numel() == 0


def test_fine_tuning_calibrates_the_energy_on_the_validation_cells(small_pbmc, seeded):
    model = fine_tuned(small_pbmc, validation_size=0.2)
    assert model.module.reference_energy.shape == (2,)
    median, upper = model.module.reference_energy.tolist()
    assert upper > median
    # the validation cells, as fine-tuning drew them: at most 1% above 1, half below 0, with the
    # linear expert as it was at calibration (fitted on the training cells, refitted on all after)
    codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
    train, validation = stratified_validation_split(codes, 0.2, seed=scvi.settings.seed or 0)
    model._fit_linear_expert(np.sort(train), codes[np.sort(train)])
    with torch.inference_mode():
        batches = model._batches(None, np.sort(validation), 256)
        energy = torch.cat([model.module.energy_novelty(model._classify_batch(t)[0]) for t in batches]).numpy()
    assert np.mean(energy > 1) <= 1 - ENERGY_QUANTILE + 1 / energy.size
    assert np.mean(energy < 0) == pytest.approx(0.5, abs=1 / energy.size + 1e-9)


def test_without_enough_validation_cells_novelty_is_the_distance_alone(small_pbmc, seeded, caplog):
    """Training cells would calibrate it too strictly: their logits are larger than new cells'."""
    with caplog.at_level(logging.INFO, logger="scrobust_sc"):
        model = fine_tuned(small_pbmc, validation_size=0)
    assert model.module.reference_energy.numel() == 0
    assert "too few" in caplog.text and "validation_size" in caplog.text
    with torch.inference_mode():
        batch = next(iter(model._batches(small_pbmc, None, 256)))
        logits, z = model._classify_batch(batch)
        expected = model.module.distance_novelty(z, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE
    np.testing.assert_allclose(model.predict_novelty(small_pbmc), expected.numpy(), rtol=1e-5)


def test_the_energy_calibration_survives_save_and_load(small_pbmc, tmp_path, seeded):
    model = fine_tuned(small_pbmc)
    model.save(tmp_path / "m")
    loaded = scrobust.SCRobust.load(tmp_path / "m")
    torch.testing.assert_close(loaded.module.reference_energy, model.module.reference_energy)
    np.testing.assert_allclose(loaded.predict_novelty(small_pbmc), model.predict_novelty(small_pbmc), rtol=1e-5)


# ---- novelty read over each cell's neighbourhood in the annotated data (tl._novelty) ----------
def test_a_novel_population_stays_novel_and_a_lone_outlier_does_not(small_pbmc):
    """On real PBMC counts: one whole type scored novel stays so; one known cell in the tail is dropped."""
    from scrobust_sc.tl._novelty import neighbourhood_novelty

    types = small_pbmc.obs["cell_type"].astype(str).to_numpy()
    novel_type = "CD14+ Monocyte"
    novel = types == novel_type
    assert novel.sum() >= 15
    cell = np.full(small_pbmc.n_obs, 0.5)
    cell[novel] = 2.0
    outlier = np.flatnonzero(~novel)[0]
    cell[outlier] = 5.0
    smoothed = neighbourhood_novelty(cell, small_pbmc.X, input_is_log=False, n_neighbors=15)
    assert smoothed[outlier] < 1.0
    assert (smoothed[novel] > 1.0).mean() > 0.9
    assert (smoothed[~novel] > 1.0).mean() < 0.05
    # each cell alone: the input as it was, and a neighbourhood of one is the cell itself
    np.testing.assert_array_equal(neighbourhood_novelty(cell, small_pbmc.X, input_is_log=False, n_neighbors=1), cell)
    # too few cells for reliable neighbourhoods (under 10 x 15): each cell's own novelty
    few = neighbourhood_novelty(cell[:120], small_pbmc.X[:120], input_is_log=False, n_neighbors=15)
    np.testing.assert_array_equal(few, cell[:120])


def test_neighbourhood_genes_are_the_shared_seurat_dispersion_of_log_values(small_pbmc):
    from scrobust_sc.data import log_normalized_moments, seurat_dispersion, top_genes_mask
    from scrobust_sc.tl._novelty import neighbourhood_genes

    counts = small_pbmc.X
    genes = neighbourhood_genes(counts, input_is_log=False, n_genes=50)
    mean, var = log_normalized_moments(counts, input_is_log=False)
    expected = np.flatnonzero(top_genes_mask(seurat_dispersion(mean, var), 50))
    np.testing.assert_array_equal(genes, expected)
    assert genes.size == 50 and (mean[genes] > 0).all()  # never a gene that is not expressed
    # log-normalised input gives the same choice as the counts it came from
    logged = sc.pp.log1p(sc.pp.normalize_total(small_pbmc, target_sum=1e4, copy=True), copy=True).X
    np.testing.assert_array_equal(neighbourhood_genes(logged, input_is_log=True, n_genes=50), genes)


def test_nearest_cells_always_include_the_cell_itself():
    from scrobust_sc.tl._novelty import nearest_cells

    points = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 3.0]])  # three exact duplicates
    idx = nearest_cells(points, 2)
    assert all(i in row for i, row in enumerate(idx))


def test_annotate_reads_novelty_over_neighbourhoods_and_keeps_each_cells_own(small_pbmc, seeded):
    from scrobust_sc.tl._novelty import neighbourhood_novelty

    model = fine_tuned(small_pbmc.copy())
    out = scrobust.tl.annotate(small_pbmc, model=model, copy=True)
    own = model.predict_novelty(small_pbmc)
    np.testing.assert_allclose(out.obs["scrobust_cell_novelty"], own, rtol=1e-5)
    expected = neighbourhood_novelty(own, small_pbmc.X, input_is_log=False, n_neighbors=15)
    np.testing.assert_allclose(out.obs["scrobust_novelty"], expected, rtol=1e-5)
    unknown = out.obs["scrobust_label"] == "Unknown"
    assert np.array_equal(unknown.to_numpy(), out.obs["scrobust_novelty"].to_numpy() > 1.0)
    assert out.uns["scrobust"]["params"]["novelty_neighbors"] == 15
    alone = scrobust.tl.annotate(small_pbmc, model=model, copy=True, novelty_neighbors=None)
    assert "scrobust_cell_novelty" not in alone.obs
    np.testing.assert_allclose(alone.obs["scrobust_novelty"], own, rtol=1e-5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="novelty_neighbors must be a whole number"):
            scrobust.tl.annotate(small_pbmc, labels_key="cell_type", novelty_neighbors=bad)


def test_neighbourhoods_are_found_in_the_counts_the_model_reads(small_pbmc, seeded):
    """A model set up on a counts layer: the neighbours come from that layer, not from a log-normalised X."""
    import scanpy as sc

    from scrobust_sc.tl._novelty import neighbourhood_novelty

    adata = small_pbmc.copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    scrobust.SCRobust.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = scrobust.SCRobust(adata, **TINY)
    model.train(max_epochs=1, enable_progress_bar=False)
    out = scrobust.tl.annotate(adata, model=model, copy=True)
    own = out.obs["scrobust_cell_novelty"].to_numpy()
    expected = neighbourhood_novelty(own, adata.layers["counts"], input_is_log=False)
    np.testing.assert_allclose(out.obs["scrobust_novelty"], expected, rtol=1e-5)


def test_a_pca_fitted_on_a_sample_finds_neighbourhoods_as_good(pbmc):
    """A query over ``max_fit_cells``: the PCA is fitted on a sample, every cell projected on it.

    On the 600 demo PBMCs with the fit on 200: each cell's neighbours share its type as
    often as in the PCA of every cell (within 0.03), far more often than in a random
    projection of the same values (the baseline, measured here), and a whole novel type
    still stays novel.
    """
    from scrobust_sc.data._ranking import log_normalized_block
    from scrobust_sc.tl._novelty import expression_pcs, neighbourhood_genes, neighbourhood_novelty

    counts, types = pbmc.X, pbmc.obs["cell_type"].astype(str).to_numpy()
    full = expression_pcs(counts, input_is_log=False)
    np.testing.assert_array_equal(expression_pcs(counts, input_is_log=False, max_fit_cells=None), full)
    sampled = expression_pcs(counts, input_is_log=False, max_fit_cells=200)
    assert sampled.shape == full.shape and sampled.dtype == np.float32
    genes = neighbourhood_genes(counts, input_is_log=False)
    values = log_normalized_block(counts, input_is_log=False)[:, genes]
    random = np.asarray(values @ np.random.default_rng(0).normal(size=(genes.size, full.shape[1])))
    on_sample, on_all = same_type_neighbours(sampled, types), same_type_neighbours(full, types)
    assert on_sample >= on_all - 0.03, (on_sample, on_all)
    assert on_sample > same_type_neighbours(random, types) + 0.1

    novel = types == "CD14+ Monocyte"
    cell = np.where(novel, 2.0, 0.5)
    smoothed = neighbourhood_novelty(cell, counts, input_is_log=False, max_fit_cells=200)
    assert (smoothed[novel] > 1.0).mean() > 0.9
    assert (smoothed[~novel] > 1.0).mean() < 0.05
    with pytest.raises(ValueError, match="max_fit_cells must be a whole number"):
        expression_pcs(counts, input_is_log=False, max_fit_cells=0.5)
