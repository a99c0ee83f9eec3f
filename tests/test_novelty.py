"""Novelty: the energy score calibrated on held-out cells, the distance score, and their maximum."""

import logging

import numpy as np
import pytest
import scvi
import torch
from scvi import REGISTRY_KEYS

import scrobust_sc as scrobust
from scrobust_sc.data._splits import stratified_validation_split
from scrobust_sc.module import SCRobustModule
from scrobust_sc.module._module import DISTANCE_NOVELTY_SCALE, ENERGY_QUANTILE

from .conftest import fine_tuned


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
