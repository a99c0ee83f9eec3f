"""Issue #5: the user's AnnData is never modified beyond the documented keys.

Every field (X, layers, obs, var, obsm, varm, obsp, uns, raw, names) is snapshotted before
and after each public call; only the keys the docs name may change, and ``copy=True``
changes nothing.
"""

import copy

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

import scrobust_sc as scrobust
from scrobust_sc import SCRobust

from .conftest import QUIET, TINY, demo_subset

matplotlib.use("Agg")

SETS = {"b_cell": ["CD79A", "MS4A1", "CD79B"], "t_cell": ["CD3E", "CD3D", "IL7R"]}
# 60 cells are too few for neighbourhoods: each cell's own novelty is read, and no
# obs/scrobust_cell_novelty is written (tests/test_novelty.py checks it on a larger query)
# and no cell is "Unknown", so no label colours are written (tl.annotate_model_unknown writes them)
ANNOTATE_KEYS = {
    "obs/scrobust_label",
    "obs/scrobust_confidence",
    "obs/scrobust_novelty",
    "obsm/scrobust_probabilities",
    "obsm/X_scrobust",
    "uns/scrobust",
}
PATHWAY_COLORS = "uns/scrobust_pathway_label_colors"
SETUP_KEYS = {"obs/_scvi_batch", "obs/_scvi_labels", "uns/_scvi_uuid", "uns/_scvi_manager_uuid"}


def _user_anndata():
    """A user's AnnData with every kind of field filled in."""
    a = demo_subset(60, 200, extra_genes=[g for genes in SETS.values() for g in genes])
    a.obs["cell_type"] = a.obs["cell_type"].astype(str).astype("category")
    a.layers["counts"] = a.X.copy()
    a.obsm["X_pca"] = np.random.default_rng(0).normal(size=(a.n_obs, 5)).astype(np.float32)
    a.varm["PCs"] = np.random.default_rng(1).normal(size=(a.n_vars, 5))
    a.obsp["distances"] = sparse.random(a.n_obs, a.n_obs, density=0.05, random_state=0, format="csr")
    a.uns["note"] = {"source": "demo", "values": np.arange(3)}
    a.raw = a.copy()
    return a


def _freeze(value):
    if isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        return value.copy(deep=True)
    if sparse.issparse(value) or isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def snapshot(a) -> dict:
    """Every field of ``a`` under a flat key (``"obs/<column>"``, ``"uns/<key>"``, ...)."""
    snap = {"X": _freeze(a.X), "obs_names": _freeze(a.obs_names), "var_names": _freeze(a.var_names)}
    for part in ("obs", "var"):
        frame = getattr(a, part)
        snap.update({f"{part}/{c}": _freeze(frame[c]) for c in frame.columns})
    for part in ("layers", "obsm", "varm", "obsp", "uns"):
        mapping = getattr(a, part)
        snap.update({f"{part}/{k}": _freeze(mapping[k]) for k in mapping.keys()})
    snap["raw"] = None if a.raw is None else (_freeze(a.raw.X), _freeze(a.raw.var))
    return snap


def _equal(x, y) -> bool:
    if type(x) is not type(y):
        return False
    if sparse.issparse(x):
        return x.shape == y.shape and x.dtype == y.dtype and (x != y).nnz == 0
    if isinstance(x, np.ndarray) and x.dtype.names:  # record arrays (rank_genes_groups): field by field
        return x.dtype == y.dtype and all(_equal(np.asarray(x[f]), np.asarray(y[f])) for f in x.dtype.names)
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    if isinstance(x, pd.DataFrame):
        return x.equals(y) and x.dtypes.equals(y.dtypes)
    if isinstance(x, pd.Series | pd.Index):
        return x.equals(y) and x.dtype == y.dtype
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple):
        return len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y, strict=True))
    return bool(x == y) or (x != x and y != y)


def changed(before: dict, after: dict) -> set[str]:
    """Keys added, removed or whose value differs."""
    return {
        k for k in before.keys() | after.keys() if k not in before or k not in after or not _equal(before[k], after[k])
    }


def test_the_snapshot_sees_every_kind_of_change():
    a = _user_anndata()
    before = snapshot(a)
    a.X[0, 0] += 1
    a.layers["counts"] = a.layers["counts"].copy()  # same values: not a change
    a.obs["new"] = 1
    a.var.loc[a.var_names[0], "gene_ids"] = "x"
    a.obsm["X_pca"][0, 0] = 9
    a.varm["PCs"] = a.varm["PCs"][:, :2]
    a.obsp["distances"][0, 1] = 5
    a.uns["note"]["values"][0] = 7
    a.raw.var["flag"] = True
    expected = {"X", "obs/new", "var/gene_ids", "obsm/X_pca", "varm/PCs", "obsp/distances", "uns/note", "raw"}
    assert changed(before, snapshot(a)) == expected


@pytest.fixture(scope="module")
def model():
    scvi.settings.seed = 0
    return scrobust.tl.fit_annotator(
        _user_anndata(),
        "cell_type",
        model_kwargs=TINY,
        pretrain_kwargs={"max_steps": 2, "batch_size": 16, **QUIET},
        train_kwargs={"max_epochs": 1, "n_genes": 32, **QUIET},
    )


def _annotated_with_markers(model):
    a = _user_anndata()
    scrobust.tl.marker_genes(a, model, groupby="cell_type", n_genes=3)
    return a


CALLS = {
    # name: (call on (adata, model, tmp_path), keys it may change)
    "setup_anndata": (lambda a, m, p: SCRobust.setup_anndata(a, layer="counts", labels_key="cell_type"), SETUP_KEYS),
    "get_latent_representation": (lambda a, m, p: m.get_latent_representation(a), set()),
    "predict": (lambda a, m, p: m.predict(a, novelty_threshold=1.2), set()),
    "predict_proba": (lambda a, m, p: m.predict_proba(a), set()),
    "predict_novelty": (lambda a, m, p: m.predict_novelty(a), set()),
    "get_attention": (lambda a, m, p: m.get_attention(a), set()),
    "get_attention_groups": (lambda a, m, p: m.get_attention(a, groups=a.obs["cell_type"]), set()),
    "align_query": (lambda a, m, p: m.align_query(a), set()),
    "load_with_adata": (lambda a, m, p: (m.save(p / "m"), SCRobust.load(p / "m", adata=a)), set()),
    "tl.embed": (lambda a, m, p: scrobust.tl.embed(a, m), {"obsm/X_scrobust", "uns/scrobust"}),
    "tl.embed_copy": (lambda a, m, p: scrobust.tl.embed(a, m, copy=True), set()),
    "tl.annotate_model": (lambda a, m, p: scrobust.tl.annotate(a, model=m), ANNOTATE_KEYS),
    "tl.annotate_model_copy": (lambda a, m, p: scrobust.tl.annotate(a, model=m, copy=True), set()),
    # every cell "Unknown" (no confidence reaches 1): the label colours, Unknown light grey, are written
    "tl.annotate_model_unknown": (
        lambda a, m, p: scrobust.tl.annotate(a, model=m, unknown_threshold=1.0),
        ANNOTATE_KEYS | {"uns/scrobust_label_colors"},
    ),
    "tl.annotate_labels": (
        lambda a, m, p: scrobust.tl.annotate(
            a, labels_key="cell_type", model_kwargs=TINY, pretrain_steps=0, max_epochs=1, train_kwargs=QUIET
        ),
        ANNOTATE_KEYS,
    ),
    "tl.annotate_reference": (
        lambda a, m, p: scrobust.tl.annotate(
            a,
            reference=_user_anndata(),
            labels_key="cell_type",
            model_kwargs=TINY,
            pretrain_steps=0,
            max_epochs=1,
            train_kwargs=QUIET,
        ),
        ANNOTATE_KEYS,
    ),
    "tl.fit_annotator": (
        lambda a, m, p: scrobust.tl.fit_annotator(
            a, "cell_type", model_kwargs=TINY, pretrain=False, train_kwargs={"max_epochs": 1, **QUIET}
        ),
        set(),
    ),
    "tl.marker_genes": (lambda a, m, p: scrobust.tl.marker_genes(a, m, groupby="cell_type"), {"uns/scrobust_markers"}),
    "tl.marker_genes_copy": (lambda a, m, p: scrobust.tl.marker_genes(a, m, groupby="cell_type", copy=True), set()),
    "tl.annotate_pathways": (
        lambda a, m, p: scrobust.tl.annotate_pathways(a, m, gene_sets=SETS),
        {"obs/scrobust_pathway_label", "obsm/scrobust_pathway_scores", "uns/scrobust_pathway"},
    ),
    "tl.annotate_pathways_unknown": (
        lambda a, m, p: scrobust.tl.annotate_pathways(a, m, gene_sets=SETS, unknown_threshold=np.inf),
        {"obs/scrobust_pathway_label", "obsm/scrobust_pathway_scores", "uns/scrobust_pathway", PATHWAY_COLORS},
    ),
    "tl.annotate_pathways_copy": (
        lambda a, m, p: scrobust.tl.annotate_pathways(a, m, gene_sets=SETS, copy=True),
        set(),
    ),
    "tl.pathway_cell_vectors": (lambda a, m, p: scrobust.tl.pathway_cell_vectors(m, a, gene_sets=SETS), set()),
    "pp.add_dropout": (lambda a, m, p: scrobust.pp.add_dropout(a, 0.3), set()),
    "pp.add_dropout_inplace": (lambda a, m, p: scrobust.pp.add_dropout(a, 0.3, copy=False), {"X"}),
    "pp.add_dropout_layer_inplace": (
        lambda a, m, p: scrobust.pp.add_dropout(a, 0.3, layer="counts", copy=False),
        {"layers/counts"},
    ),
    "pl.confusion": (lambda a, m, p: scrobust.pl.confusion(a, true="cell_type", pred="cell_type"), set()),
    "pl.pathway_embedding": (
        lambda a, m, p: scrobust.pl.pathway_embedding(a, m, gene_sets=SETS, basis="tsne", color="cell_type"),
        set(),
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_only_documented_keys_change(name, model, tmp_path, seeded):
    call, allowed = CALLS[name]
    a = _user_anndata()
    before = snapshot(a)
    call(a, model, tmp_path)
    assert changed(before, snapshot(a)) == allowed


def test_marker_plot_changes_nothing(model):
    a = _annotated_with_markers(model)
    before = snapshot(a)
    scrobust.pl.attention_markers(a, groupby="cell_type")
    assert changed(before, snapshot(a)) == set()


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_the_model_and_training_leave_the_registered_anndata_as_set_up(stage, seeded):
    a = _user_anndata()
    SCRobust.setup_anndata(a, labels_key="cell_type")
    before = snapshot(a)
    m = SCRobust(a, **TINY)
    if stage == "pretrain":
        m.pretrain(max_steps=2, batch_size=16, **QUIET)
    else:
        m.train(max_epochs=1, n_genes=32, **QUIET)
    m.get_latent_representation()
    m.predict()
    assert changed(before, snapshot(a)) == set()
