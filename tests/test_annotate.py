import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi

import scrobust_sc as scrobust
from scrobust_sc import SCRobust

from .conftest import QUIET, TINY

FAST = {"model_kwargs": TINY, "pretrain_steps": 0, "max_epochs": 2, "train_kwargs": {"n_genes": 64, **QUIET}}


def test_annotate_writes_documented_keys_and_nothing_else(small_pbmc, seeded):
    adata = small_pbmc
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[:20, adata.obs.columns.get_loc("cell_type")] = np.nan  # unlabelled cells
    before_obs = adata.obs.copy()
    before_x = adata.X.copy()
    before_uns = set(adata.uns)
    scrobust.tl.annotate(adata, labels_key="cell_type", **FAST)
    new = {"scrobust_label", "scrobust_confidence", "scrobust_novelty", "scrobust_cell_novelty"}
    assert set(adata.obs.columns) - set(before_obs.columns) == new
    pd.testing.assert_frame_equal(adata.obs[before_obs.columns], before_obs)
    assert (adata.X != before_x).nnz == 0
    assert set(adata.obsm) == {"X_scrobust", "scrobust_probabilities"}
    assert set(adata.uns) - before_uns == {"scrobust"}
    assert adata.obs["scrobust_label"].dtype == "category"
    proba = adata.obsm["scrobust_probabilities"]
    assert proba.shape == (adata.n_obs, len(adata.uns["scrobust"]["cell_types"]))
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(adata.obs["scrobust_confidence"], proba.max(1), rtol=1e-6)
    low = adata.obs["scrobust_novelty"] > 1.0  # the documented default; no probability threshold
    assert (adata.obs.loc[low, "scrobust_label"] == "Unknown").all()
    assert (adata.obs.loc[~low, "scrobust_label"] != "Unknown").all()


def test_annotate_copy_leaves_the_input_untouched(small_pbmc, seeded):
    keys = (set(small_pbmc.obs), set(small_pbmc.obsm), set(small_pbmc.uns))
    out = scrobust.tl.annotate(small_pbmc, labels_key="cell_type", copy=True, **FAST)
    assert "scrobust_label" in out.obs
    assert (set(small_pbmc.obs), set(small_pbmc.obsm), set(small_pbmc.uns)) == keys


def test_reference_to_query_with_a_reduced_gene_panel(small_pbmc, seeded):
    ref, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    query = query[:, np.random.default_rng(0).permutation(query.n_vars)[: query.n_vars // 2]].copy()
    scrobust.tl.annotate(query, reference=ref, labels_key="cell_type", **FAST)
    report = query.uns["scrobust"]["gene_alignment"]
    assert report["n_genes_missing"] == small_pbmc.n_vars - query.n_vars
    assert query.obs["scrobust_label"].notna().all()


def test_allowed_labels_restrict_predictions(small_pbmc, seeded):
    allowed = sorted(small_pbmc.obs["cell_type"].unique())[:2]
    # both "Unknown" rules off: every cell gets one of the allowed types (with the novelty rule
    # on, a cell may also be "Unknown", depending on float rounding of the thread count)
    kwargs = {"unknown_threshold": None, "novelty_threshold": None}
    scrobust.tl.annotate(small_pbmc, labels_key="cell_type", allowed_labels=allowed, **kwargs, **FAST)
    assert set(small_pbmc.obs["scrobust_label"].unique()) <= set(allowed)
    with pytest.raises(ValueError, match="allowed_labels"):
        scrobust.tl.annotate(small_pbmc, labels_key="cell_type", allowed_labels=["Martian"], **FAST)


def test_bad_labels_give_clear_errors(small_pbmc):
    with pytest.raises(ValueError, match="not a column"):
        scrobust.tl.annotate(small_pbmc, labels_key="celltype", **FAST)
    a = small_pbmc.copy()
    a.obs["cell_type"] = np.nan
    with pytest.raises(ValueError, match="no labelled cell"):
        scrobust.tl.annotate(a, labels_key="cell_type", **FAST)
    a.obs["cell_type"] = "T cell"
    with pytest.raises(ValueError, match="at least 2 cell types"):
        scrobust.tl.annotate(a, labels_key="cell_type", **FAST)
    with pytest.raises(ValueError, match="labels_key"):
        scrobust.tl.annotate(small_pbmc)


def test_a_class_with_one_cell_stays_in_training(small_pbmc, seeded, caplog):
    a = small_pbmc.copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[0, a.obs.columns.get_loc("cell_type")] = "singleton"
    with caplog.at_level("INFO", logger="scrobust_sc"):
        scrobust.tl.annotate(a, labels_key="cell_type", **FAST)
    assert "stay in training only" in caplog.text
    assert "singleton" in a.uns["scrobust"]["cell_types"]


def test_annotate_on_a_view(small_pbmc, seeded):
    view = small_pbmc[:100]
    out = scrobust.tl.annotate(view, labels_key="cell_type", copy=True, **FAST)
    assert out.n_obs == 100 and "scrobust_label" in out.obs


def test_saved_model_annotates_a_query(small_pbmc, tmp_path, seeded):
    model = scrobust.tl.fit_annotator(
        small_pbmc,
        "cell_type",
        model_kwargs=TINY,
        pretrain=False,
        train_kwargs={"max_epochs": 2, "n_genes": 64, **QUIET},
    )
    expected = model.predict_proba(small_pbmc)
    model.save(tmp_path / "m")
    loaded = SCRobust.load(tmp_path / "m")
    query = small_pbmc.copy()
    scrobust.tl.annotate(query, model=loaded, unknown_threshold=None, novelty_threshold=None)
    np.testing.assert_allclose(query.obsm["scrobust_probabilities"], expected.to_numpy(), rtol=1e-5, atol=1e-6)
    assert (query.obs["scrobust_label"].astype(str).to_numpy() == expected.idxmax(axis=1).to_numpy()).all()


def test_many_unknown_calls_warn_and_name_the_fix(small_pbmc, seeded, caplog):
    """A query called "Unknown" wholesale (e.g. another platform) gets a warning naming novelty_threshold."""
    model = scrobust.tl.fit_annotator(
        small_pbmc, "cell_type", model_kwargs=TINY, pretrain=False, train_kwargs={"max_epochs": 1, **QUIET}
    )
    query = small_pbmc.copy()
    with caplog.at_level("WARNING"):
        scrobust.tl.annotate(query, model=model, novelty_threshold=None)
    assert "Unknown" not in caplog.text
    with caplog.at_level("WARNING"):
        scrobust.tl.annotate(query, model=model, novelty_threshold=0.0)  # every cell above it
    assert (query.obs["scrobust_label"] == "Unknown").all()
    assert "100% of the 200 cells" in caplog.text and "novelty_threshold=None" in caplog.text
    median = float(np.median(query.obs["scrobust_novelty"]))
    assert f"median novelty is {median:.2f}, above the threshold 0.00" in caplog.text
    caplog.clear()
    threshold = float(np.quantile(query.obs["scrobust_novelty"], 0.7))  # over a fifth Unknown, median below it
    with caplog.at_level("WARNING"):
        scrobust.tl.annotate(query, model=model, novelty_threshold=threshold)
    assert "of the 200 cells were called" in caplog.text and "median novelty" not in caplog.text


def test_untrained_model_cannot_annotate(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    with pytest.raises(ValueError, match="not fine-tuned"):
        scrobust.tl.annotate(small_pbmc.copy(), model=SCRobust(small_pbmc, **TINY))


def test_ctrl_c_during_training_keeps_the_best_weights(small_pbmc, seeded, caplog):
    import signal

    from lightning.pytorch.callbacks import Callback

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")
    model = SCRobust(small_pbmc, **TINY)
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        model.train(max_epochs=10, n_genes=64, keep_best=True, callbacks=[CtrlC()], **QUIET)
    assert "interrupted" in caplog.text
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl+C works again afterwards
    assert model.train_params_["train"]["best_epoch"] <= 3
    assert len(model.history["f1_macro_validation"]) == 3
    assert len(model.predict()) == small_pbmc.n_obs


def test_model_level_helpers_agree_with_the_tools(small_pbmc, tmp_path, seeded):
    import matplotlib

    matplotlib.use("Agg")
    from scrobust_sc.tl import gene_attention

    model = scrobust.tl.fit_annotator(
        small_pbmc,
        "cell_type",
        model_kwargs=TINY,
        pretrain_kwargs={"max_steps": 3, **QUIET},
        train_kwargs={"max_epochs": 2, "n_genes": 64, **QUIET},
    )
    out = scrobust.tl.annotate(small_pbmc, model=model, copy=True)
    np.testing.assert_allclose(model.predict_novelty(small_pbmc), out.obs["scrobust_cell_novelty"], rtol=1e-5)
    assert (model.get_attention(small_pbmc) != gene_attention(model, small_pbmc)).nnz == 0
    axes = scrobust.pl.history(model, save=str(tmp_path / "history.png"))
    assert (tmp_path / "history.png").stat().st_size > 5000
    legends = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in axes}
    assert "contrastive_loss_train" in legends["pre-training loss"]
    assert "f1_macro_validation" in legends["fine-tuning accuracy and macro-F1"]
    assert "f1_macro_validation" not in legends["pre-training loss"]


def test_keep_best_auto_keeps_the_last_epoch_when_a_type_cannot_be_validated(small_pbmc, seeded, caplog):
    from scrobust_sc.model._model import _resolve_keep_best

    types = ["a", "b", "rare"]
    assert _resolve_keep_best("auto", np.array([0, 1, 2]), np.array([0, 1, 2]), types) is True
    assert _resolve_keep_best("auto", np.array([0, 1, 2]), np.array([0, 1]), types) is False
    assert _resolve_keep_best(True, np.array([0, 1, 2]), np.array([0, 1]), types) is True
    assert _resolve_keep_best("auto", np.array([0, 1]), np.array([], dtype=int), types) is False
    with pytest.raises(ValueError, match="keep_best must be"):
        _resolve_keep_best("best", np.array([0]), np.array([0]), types)

    adata = small_pbmc.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labels[:3] = "rare type"  # 3 cells: too few to hold one out for validation
    adata.obs["cell_type"] = labels
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY)
    with caplog.at_level("INFO", logger="scrobust_sc"):
        model.train(max_epochs=3, n_genes=64, **QUIET)
    assert "Keeping the last epoch" in caplog.text and "rare type" in caplog.text
    assert "best_epoch" not in model.train_params_["train"]
    assert len(model.history["f1_macro_validation"]) == 3


def test_fit_annotator_pretrains_on_unlabelled_query_cells_matched_by_gene_name(small_pbmc, seeded):
    ref, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    order = np.random.default_rng(0).permutation(query.n_vars)
    query = query[:, order[: query.n_vars - 10]].copy()  # shuffled, 10 genes missing
    query_before = query.copy()
    model = scrobust.tl.fit_annotator(
        ref,
        "cell_type",
        unlabelled=query,
        model_kwargs=TINY,
        pretrain_kwargs={"max_steps": 2, **QUIET},
        train_kwargs={"max_epochs": 1, "n_genes": 64, **QUIET},
    )
    assert model.adata.n_obs == ref.n_obs + query.n_obs
    labels = model.adata.obs["cell_type"].astype(str).to_numpy()
    assert (labels[ref.n_obs :] == "Unknown").all()  # pre-trained on, never fitted
    assert (labels[: ref.n_obs] == ref.obs["cell_type"].astype(str).to_numpy()).all()
    x = model.adata.X[ref.n_obs :].toarray()
    genes = list(ref.var_names)
    for j in range(0, query.n_vars, 97):  # each query gene sits in the reference's column of that name
        np.testing.assert_array_equal(x[:, genes.index(query.var_names[j])], query.X[:, j].toarray().ravel())
    missing = [genes.index(g) for g in set(genes) - set(query.var_names)]
    assert not x[:, missing].any()
    assert (query.X != query_before.X).nnz == 0 and query.var_names.equals(query_before.var_names)


def test_annotate_pretrain_on_query(small_pbmc, seeded):
    ref, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    fast = {**FAST, "pretrain_steps": 2, "pretrain_kwargs": QUIET}
    scrobust.tl.annotate(query, reference=ref, labels_key="cell_type", pretrain_on_query=True, **fast)
    assert query.obs["scrobust_label"].notna().all()
    assert query.uns["scrobust"]["params"]["pretrain_on_query"] is True
    with pytest.raises(ValueError, match="pretrain_on_query needs pre-training"):
        scrobust.tl.annotate(query, reference=ref, labels_key="cell_type", pretrain_on_query=True, **FAST)
    with pytest.raises(ValueError, match="pretrain_on_query applies with reference="):
        scrobust.tl.annotate(small_pbmc, labels_key="cell_type", pretrain_on_query=True, **fast)


@pytest.mark.parametrize("with_query", [False, True])
def test_fit_annotator_reads_a_backed_reference_into_memory(small_pbmc, tmp_path, with_query):
    ref, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    backed = ad.read_h5ad(tmp_path / "ref.h5ad", backed="r")
    kwargs = {
        "unlabelled": query if with_query else None,
        "model_kwargs": TINY,
        "pretrain_kwargs": {"max_steps": 2, **QUIET},
        "train_kwargs": {"max_epochs": 1, "n_genes": 64, **QUIET},
    }
    fitted = {}
    for name, reference in (("backed", backed), ("in_memory", ref)):
        scvi.settings.seed = 0
        model = scrobust.tl.fit_annotator(reference, "cell_type", **kwargs)
        fitted[name] = model.get_latent_representation(ref)
    np.testing.assert_allclose(fitted["backed"], fitted["in_memory"], rtol=1e-5, atol=1e-6)
    assert backed.isbacked and backed.n_obs == 150  # the user's handle is left as it was


def test_cells_without_counts_in_the_models_genes_are_unknown(small_pbmc, seeded, caplog):
    """An empty droplet has nothing to classify: "Unknown" whatever the thresholds."""
    model = scrobust.tl.fit_annotator(
        small_pbmc, "cell_type", model_kwargs=TINY, pretrain=False, train_kwargs={"max_epochs": 1, **QUIET}
    )
    query = small_pbmc.copy()
    x = query.X.tolil()
    x[:5, :] = 0
    query.X = x.tocsr()
    query.X.eliminate_zeros()
    with caplog.at_level("INFO", logger="scrobust_sc"):
        scrobust.tl.annotate(query, model=model)
    assert (query.obs["scrobust_label"].iloc[:5] == "Unknown").all()
    assert "5 cells have no count in the model's genes" in caplog.text
    scrobust.tl.annotate(query, model=model, unknown_threshold=None, novelty_threshold=None)
    labels = query.obs["scrobust_label"].astype(str).to_numpy()
    assert (labels[:5] == "Unknown").all()
    expected = model.predict_proba(query).idxmax(axis=1).to_numpy()
    assert (labels[5:] == expected[5:]).all()  # the other cells keep their prediction
