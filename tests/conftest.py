import logging

import numpy as np
import pytest
import scvi
import torch

import scrobust_sc as scrobust

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
torch.set_num_threads(2)

#: small encoder for fast tests
TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": None}


@pytest.fixture
def pbmc():
    """600 sorted PBMCs with raw counts (bundled demo data, a real dataset)."""
    return scrobust.data.pbmc_demo()


@pytest.fixture
def small_pbmc(pbmc):
    """200 cells x 800 genes of the demo data, for quick API tests."""
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(pbmc.n_obs, 200, replace=False))
    frac = np.asarray((pbmc.X > 0).mean(0)).ravel()
    genes = np.sort(np.argsort(-frac)[:800])
    return pbmc[cells, genes].copy()


@pytest.fixture
def seeded():
    scvi.settings.seed = 0
    yield
