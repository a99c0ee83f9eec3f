import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scrobust_sc.tl import (
    annotate_pathways,
    closeness,
    match_gene_sets,
    pathway_cell_vectors,
    pathway_vectors,
)

from .conftest import demo_subset, tiny_model  # noqa: E402

SETS = {
    "monocyte": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1"],
    "B": ["MS4A1", "CD79A", "CD79B"],
    "NK": ["NKG7", "GNLY", "NOT_A_GENE"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    """150 demo cells over 400 frequent genes plus the marker genes of SETS (raw counts)."""
    return demo_subset(150, 400, [g for s in SETS.values() for g in s])


@pytest.fixture(scope="module")
def model(data):
    return tiny_model(data)


def encode(model, idx, vals):
    """The encoder's CLS output for one token sequence, in eval mode."""
    model.module.eval()
    with torch.inference_mode():
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)[None]
        vals_t = torch.as_tensor(np.asarray(vals), dtype=torch.float32)[None]
        return model.module.encoder(idx_t, vals_t, torch.ones_like(idx_t, dtype=torch.bool))[0].numpy()


# ---- closeness --------------------------------------------------------------------------
def test_closeness_equals_numpy_row_by_row():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    expected = np.array([np.dot(a[i], b[i]) / np.dot(b[i], b[i]) for i in range(7)])
    np.testing.assert_allclose(closeness(a, b), expected, rtol=1e-12)
    # |a| cos(theta) / |b|
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(closeness(a, b), np.linalg.norm(a, axis=1) * cos / np.linalg.norm(b, axis=1))
    out = closeness(torch.as_tensor(a), torch.as_tensor(b))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_closeness_broadcasts_cells_by_pathways():
    rng = np.random.default_rng(2)
    cells, paths = rng.normal(size=(6, 3, 4)), rng.normal(size=(3, 4))
    scores = closeness(cells, paths[None])
    assert scores.shape == (6, 3)
    for i in range(6):
        for p in range(3):
            assert scores[i, p] == pytest.approx(cells[i, p] @ paths[p] / (paths[p] @ paths[p]))


def test_closeness_counts_length_and_direction():
    b = np.array([[3.0, 4.0]])
    assert closeness(b, b)[0] == pytest.approx(1.0)
    assert closeness(2 * b, b)[0] == pytest.approx(2.0)
    assert closeness(b, 2 * b)[0] == pytest.approx(0.5)
    assert closeness(np.array([[-4.0, 3.0]]), b)[0] == pytest.approx(0.0)


# ---- gene matching ----------------------------------------------------------------------
def test_match_gene_sets_case_insensitive_exact_first(caplog):
    vocab = ["INS", "GCG", "Sst", "SST", "TTR"]
    with caplog.at_level(logging.INFO, logger="scrobust_sc"):
        matched = match_gene_sets(vocab, {"alpha": ["Gcg", "ttr", "Arx", "GCG"], "delta": ["Sst", "sst"]})
    assert matched["alpha"].tolist() == [1, 4]  # once each, set order; Arx missing
    assert matched["delta"].tolist() == [2]  # exact "Sst" first; "sst" falls back to the first match
    assert "'alpha': 1 of 4 genes" in caplog.text and "Arx" in caplog.text
    assert "'delta'" not in caplog.text


def test_set_without_known_gene_is_an_error_naming_it():
    with pytest.raises(ValueError, match="gene set 'mouse_only'"):
        match_gene_sets(["INS", "GCG"], {"ok": ["INS"], "mouse_only": ["Ins1", "Ins2"]})


def test_gene_sets_from_a_gmt_path(tmp_path, model):
    path = tmp_path / "sets.gmt"
    path.write_text("".join(f"{n}\tdesc\t" + "\t".join(g) + "\n" for n, g in SETS.items()))
    np.testing.assert_allclose(pathway_vectors(model, str(path)), pathway_vectors(model, SETS), rtol=1e-6)


# ---- pathway vectors --------------------------------------------------------------------
def test_pathway_vector_is_cls_output_of_the_set_genes_valued_one(model, caplog):
    with caplog.at_level(logging.INFO, logger="scrobust_sc"):
        vectors = pathway_vectors(model, SETS)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert "NOT_A_GENE" in caplog.text
    names = model.gene_names_
    for row, genes in zip(vectors, SETS.values(), strict=True):
        idx = [names.index(g) for g in genes if g in names]
        np.testing.assert_allclose(row, encode(model, idx, np.ones(len(idx))), rtol=1e-5, atol=1e-6)


def test_pathway_vectors_match_lower_case_symbols(model):
    lower = {name: [g.lower() for g in genes] for name, genes in SETS.items()}
    np.testing.assert_allclose(pathway_vectors(model, lower), pathway_vectors(model, SETS), rtol=1e-6)


def test_pathway_cell_vectors_keep_zero_valued_tokens(model, data):
    cells = pathway_cell_vectors(model, data, gene_sets=SETS)
    assert cells.shape == (data.n_obs, 3, 32)
    genes = SETS["monocyte"]
    idx = [model.gene_names_.index(g) for g in genes]
    counts = data.X.toarray() if hasattr(data.X, "toarray") else np.asarray(data.X)
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, data.var_names.get_indexer(genes)]
    with_zero = np.flatnonzero(((logged == 0).sum(1) > 0) & ((logged > 0).sum(1) > 0))
    assert with_zero.size > 0
    for c in with_zero[:3]:
        np.testing.assert_allclose(cells[c, 0], encode(model, idx, logged[c]), rtol=1e-4, atol=1e-5)
        # the zeros sit in the sequence: dropping them gives another vector
        nz = logged[c] > 0
        dropped = encode(model, np.asarray(idx)[nz], logged[c][nz])
        assert not np.allclose(cells[c, 0], dropped, atol=1e-5)


# ---- annotation -------------------------------------------------------------------------
def test_annotate_pathways_writes_labels_scores_and_names(model, data, tmp_path):
    adata = data.copy()
    assert annotate_pathways(adata, model, gene_sets=SETS) is None
    scores = adata.obsm["scrobust_pathway_scores"]
    assert scores.shape == (adata.n_obs, 3) and scores.dtype == np.float32
    assert adata.uns["scrobust_pathway"]["pathways"] == list(SETS)
    assert adata.uns["scrobust_pathway"]["n_genes"] == [5, 3, 2]
    expected = closeness(pathway_cell_vectors(model, data, gene_sets=SETS), pathway_vectors(model, SETS)[None])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    labels = adata.obs["scrobust_pathway_label"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert set(labels.cat.categories) == set(labels.astype(str)) <= set(SETS)  # only labels some cell got
    np.testing.assert_array_equal(labels.astype(str).to_numpy(), np.array(list(SETS))[scores.argmax(1)])
    adata.write_h5ad(tmp_path / "annotated.h5ad")
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert list(back.uns["scrobust_pathway"]["pathways"]) == list(SETS)


def test_annotate_pathways_unknown_threshold_and_copy(model, data):
    adata = data.copy()
    out = annotate_pathways(adata, model, gene_sets=SETS, key_added="pw", unknown_threshold=np.inf, copy=True)
    assert "pw_label" not in adata.obs
    assert (out.obs["pw_label"] == "Unknown").all()
    best = out.obsm["pw_scores"].max(1)
    threshold = float(np.median(best))
    annotate_pathways(adata, model, gene_sets=SETS, key_added="pw", unknown_threshold=threshold)
    np.testing.assert_array_equal((adata.obs["pw_label"] == "Unknown").to_numpy(), best < threshold)


def test_annotate_pathways_refuses_a_set_named_unknown(model, data):
    with pytest.raises(ValueError, match="Unknown"):
        annotate_pathways(data.copy(), model, gene_sets={"Unknown": ["LYZ"], "B": ["MS4A1"]})
