import numpy as np

from scrobust_sc.data._ranking import log_normalized_block
from scrobust_sc.model._linear_genes import choose_linear_genes


def _two_types(informative_gene: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b"], 60)
    x = rng.poisson(1.0, (120, 200)).astype(float)
    x[labels == "a", informative_gene] += 4.0
    return log_normalized_block(x, input_is_log=False), labels


def test_hvgs_are_chosen_when_only_they_hold_the_signal():
    x, labels = _two_types(informative_gene=0)
    subset = np.arange(200) < 5  # holds gene 0; the other 195 genes are noise
    use, scores = choose_linear_genes(x, labels, subset)
    assert use and scores["hvgs"] > scores["all_genes"]


def test_every_gene_is_kept_when_the_subset_misses_the_signal():
    x, labels = _two_types(informative_gene=150)
    use, scores = choose_linear_genes(x, labels, np.arange(200) < 5)
    assert not use and scores["all_genes"] > scores["hvgs"]


def test_too_few_cells_keep_every_gene_without_fitting():
    x, labels = _two_types(informative_gene=0)
    use, scores = choose_linear_genes(x[54:66], labels[54:66], np.arange(200) < 5)
    assert not use and "hvgs" not in scores


def test_the_model_reads_at_most_max_choice_cells_for_the_choice(monkeypatch):
    import scrobust_sc as scrobust
    from scrobust_sc.model import _linear_genes

    seen = {}

    def spy(x, labels, hvg_mask, **kwargs):
        seen["rows"] = x.shape[0]
        return False, {}

    monkeypatch.setattr(_linear_genes, "MAX_CHOICE_CELLS", 50)
    monkeypatch.setattr("scrobust_sc.model._model.choose_linear_genes", spy)
    adata = scrobust.data.pbmc_demo()[:120].copy()
    scrobust.SCRobust.setup_anndata(adata, labels_key="cell_type")
    scrobust.SCRobust(adata, d_model=16, n_heads=2)
    assert seen["rows"] == 50  # a subset, drawn before the cells are copied and normalised
