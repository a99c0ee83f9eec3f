import logging

import numpy as np
import pytest
import scvi
import torch

import scrobust_sc as scrobust

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test leaves torch's thread count as it found it.

    Code under test may set it (a script's ``main()``, numba through scanpy); a count left
    behind made a later test compare runs computed with different thread counts.
    """
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


#: small encoder for fast tests
TINY = {"d_model": 32, "n_heads": 2, "n_layers": 1}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": None}


@pytest.fixture
def pbmc():
    """600 sorted PBMCs with raw counts (bundled demo data, a real dataset)."""
    return scrobust.data.pbmc_demo()


def demo_subset(n_cells: int, n_genes: int, extra_genes=(), seed: int = 0):
    """``n_cells`` random demo cells over the ``n_genes`` most often expressed genes (+ extra)."""
    adata = scrobust.data.pbmc_demo()
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(adata.n_obs, n_cells, replace=False))
    frac = np.asarray((adata.X > 0).mean(0)).ravel()
    genes = set(np.argsort(-frac)[:n_genes]) | set(adata.var_names.get_indexer(list(extra_genes)))
    genes.discard(-1)
    return adata[cells, np.sort(list(genes))].copy()


def same_type_neighbours(points, labels, k: int = 15) -> float:
    """Share of each cell's ``k - 1`` nearest other cells in ``points`` that have its label."""
    from scrobust_sc.tl._novelty import nearest_cells

    labels = np.asarray(labels)
    near = nearest_cells(np.asarray(points), k)
    near = np.array([row[row != i][: k - 1] for i, row in enumerate(near)])
    return float((labels[near] == labels[:, None]).mean())


def fine_tuned(adata, **train_kwargs):
    """A TINY model fine-tuned for 2 epochs on ``adata`` (registered in place with its cell types)."""
    scrobust.SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = scrobust.SCRobust(adata, **TINY)
    model.train(max_epochs=2, enable_progress_bar=False, **train_kwargs)
    return model


def tiny_model(adata):
    """An untrained TINY model on a registered copy of ``adata`` (seed 0)."""
    scvi.settings.seed = 0
    adata = adata.copy()
    scrobust.SCRobust.setup_anndata(adata)
    return scrobust.SCRobust(adata, **TINY)


@pytest.fixture
def small_pbmc():
    """200 cells x 800 genes of the demo data, for quick API tests."""
    return demo_subset(200, 800)


@pytest.fixture
def one_thread():
    """One torch thread per test (numba, e.g. in sc.pp.log1p, resets torch's thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def seeded():
    scvi.settings.seed = 0
    yield
