"""Inputs a user plausibly has, found mishandled by an adversarial review (stop 34)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scrobust_sc as scrobust

from .conftest import QUIET, TINY

FIT = {"model_kwargs": TINY, "pretrain": False, "train_kwargs": {"max_epochs": 2, "n_genes": 64, **QUIET}}


@pytest.fixture
def counts_model(small_pbmc, seeded):
    """A TINY model fine-tuned on the counts in ``X``."""
    return scrobust.tl.fit_annotator(small_pbmc, "cell_type", **FIT)


def _log_query_with_counts_layer(adata):
    query = adata.copy()
    query.layers["counts"] = query.X.copy()
    sc.pp.normalize_total(query)
    sc.pp.log1p(query)
    return query


def test_annotate_with_a_model_reads_the_counts_from_the_given_layer(small_pbmc, counts_model):
    expected = counts_model.predict_proba(small_pbmc).to_numpy()
    query = _log_query_with_counts_layer(small_pbmc)
    x_before = query.X.copy()
    scrobust.tl.annotate(query, model=counts_model, layer="counts", novelty_threshold=None)
    np.testing.assert_allclose(query.obsm["scrobust_probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert (query.X != x_before).nnz == 0 and set(query.layers) == {"counts"}
    with pytest.raises(ValueError, match="layer 'raw_counts' is not in adata.layers"):
        scrobust.tl.annotate(query, model=counts_model, layer="raw_counts")


def test_fit_annotator_keeps_the_gene_symbols_column(small_pbmc, seeded):
    reference = small_pbmc.copy()
    reference.var["symbol"] = reference.var_names.astype(str)
    reference.var_names = [f"ENSG{i:011d}" for i in range(reference.n_vars)]
    model = scrobust.tl.fit_annotator(reference, "cell_type", setup_kwargs={"gene_symbols": "symbol"}, **FIT)
    assert list(model.gene_names_) == list(small_pbmc.var_names)


def test_a_float16_query_in_another_gene_order_is_reordered(small_pbmc, counts_model):
    query = small_pbmc.copy()
    query.X = query.X.toarray().astype(np.float16)
    expected = counts_model.predict_proba(query).to_numpy()
    reordered = query[:, ::-1].copy()
    np.testing.assert_allclose(counts_model.predict_proba(reordered).to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_copy_of_a_backed_anndata_is_refused_before_any_work(small_pbmc, counts_model, tmp_path):
    small_pbmc.write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    with pytest.raises(ValueError, match="copy=True.*backed"):
        scrobust.tl.annotate(backed, model=counts_model, copy=True)
    with pytest.raises(ValueError, match="copy=True.*backed"):
        scrobust.tl.embed(backed, counts_model, copy=True)


def test_a_model_and_a_reference_together_are_refused(small_pbmc, counts_model):
    with pytest.raises(ValueError, match="model= or reference="):
        scrobust.tl.annotate(small_pbmc, model=counts_model, reference=small_pbmc, labels_key="cell_type")


@pytest.mark.parametrize("n_genes", [0, -5])
def test_embedding_needs_at_least_one_gene_per_cell(small_pbmc, counts_model, n_genes):
    with pytest.raises(ValueError, match="n_genes must be a whole number of at least 1"):
        counts_model.get_latent_representation(small_pbmc, n_genes=n_genes)


def test_annotate_keeps_the_record_of_an_earlier_embed_only_while_its_embedding_stays(small_pbmc, counts_model):
    query = small_pbmc.copy()
    scrobust.tl.embed(query, counts_model, key_added="X_mine", n_genes=200)
    record = dict(query.uns["scrobust"]["embed"])
    scrobust.tl.annotate(query, model=counts_model)
    assert query.uns["scrobust"]["embed"] == record  # X_mine is untouched: its record stays
    assert {"params", "cell_types"} <= set(query.uns["scrobust"])
    # annotate overwrites the embedding an earlier embed wrote: that record no longer holds
    scrobust.tl.embed(query, counts_model, n_genes=50, gene_selection="expressed")
    scrobust.tl.annotate(query, model=counts_model)
    assert "embed" not in query.uns["scrobust"]
    expected = counts_model.get_latent_representation(query)
    np.testing.assert_allclose(query.obsm["X_scrobust"], expected, rtol=1e-5, atol=1e-6)
    assert query.uns["scrobust"]["params"]["embedding"] == {"layer": -1, "gene_selection": "unique", "n_genes": 1000}


def test_labels_that_look_like_mistakes_are_taught_with_a_warning(small_pbmc, caplog):
    from scrobust_sc.tl._annotate import _training_view

    adata = small_pbmc.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    first = labels[0]
    labels[:3] = f" {first} "
    labels[3:6] = "nan"
    adata.obs["cell_type"] = labels
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        view = _training_view(adata, "cell_type", None)
    assert f"' {first} '" in caplog.text and "surrounding spaces" in caplog.text
    assert "'nan'" in caplog.text and "missing value" in caplog.text
    assert {f" {first} ", "nan"} <= set(view.obs["cell_type"].cat.categories)  # taught as given, not guessed
    caplog.clear()
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        _training_view(small_pbmc, "cell_type", None)
    assert caplog.text == ""


def test_a_model_without_a_novelty_reference_says_so_instead_of_scoring_zero(caplog):
    from pathlib import Path

    fixtures = Path(__file__).parent / "data"
    model = scrobust.SCRobust.load(fixtures / "model_v0.1.0")  # saved before the novelty references existed
    query = ad.read_h5ad(fixtures / "model_v0.1.0_cells.h5ad")
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        scrobust.tl.annotate(query, model=model)
    assert "no novelty reference" in caplog.text
    assert query.obs["scrobust_novelty"].isna().all()  # not a score of 0 that looks like data
    assert query.obs["scrobust_label"].notna().all() and (query.obs["scrobust_label"] != "Unknown").all()


def test_numeric_labels_come_back_as_their_text(small_pbmc, seeded):
    adata = small_pbmc.copy()
    codes = adata.obs["cell_type"].astype("category").cat.codes.to_numpy()
    adata.obs["type_id"] = codes.astype(np.int64)
    fit = {k: v for k, v in FIT.items() if k != "pretrain"}
    scrobust.tl.annotate(adata, labels_key="type_id", pretrain_steps=0, novelty_threshold=None, **fit)
    assert set(adata.obs["scrobust_label"].cat.categories) - {"Unknown"} <= {str(c) for c in np.unique(codes)}
    assert adata.obs["type_id"].dtype == np.int64  # the user's column is left as it was


# Found by the second review (stop 34): the model class, markers, plots, GMT files.


def test_a_boolean_mask_as_indices_embeds_exactly_the_masked_cells(small_pbmc, counts_model):
    mask = (small_pbmc.obs["cell_type"] == small_pbmc.obs["cell_type"].iloc[0]).to_numpy()
    positions = np.flatnonzero(mask)
    by_mask = counts_model.get_latent_representation(small_pbmc, indices=mask)
    by_position = counts_model.get_latent_representation(small_pbmc, indices=positions)
    assert by_mask.shape == (positions.size, by_position.shape[1])
    np.testing.assert_allclose(by_mask, by_position, rtol=1e-6)
    with pytest.raises(ValueError, match="boolean mask of 3 entries for 200 cells"):
        counts_model.get_latent_representation(small_pbmc, indices=np.ones(3, dtype=bool))


def test_an_interrupted_overwrite_after_the_weights_are_written_keeps_the_previous_model(
    small_pbmc, counts_model, tmp_path, monkeypatch
):
    from scrobust_sc.model import _io

    counts_model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    other = scrobust.tl.fit_annotator(small_pbmc[:120].copy(), "cell_type", **FIT)

    def interrupted(path):  # Ctrl-C while the new weights' checksum is computed
        raise KeyboardInterrupt

    monkeypatch.setattr(_io, "_sha256", interrupted)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    scrobust.SCRobust.load(tmp_path / "m")


def test_attention_groups_given_as_a_series_follow_its_index(small_pbmc, counts_model):
    groups = small_pbmc.obs["cell_type"]
    shuffled = groups.sample(frac=1, random_state=0)  # same label for every cell, other order
    expected = counts_model.get_attention(small_pbmc, groups=groups)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(counts_model.get_attention(small_pbmc, groups=shuffled), expected)


def test_marker_heatmap_leaves_out_cells_without_a_group(small_pbmc, counts_model):
    import matplotlib

    matplotlib.use("Agg")
    adata = small_pbmc.copy()
    adata.obs["group"] = adata.obs["cell_type"].astype(object)
    adata.obs.loc[adata.obs_names[:20], "group"] = np.nan
    scrobust.tl.marker_genes(adata, counts_model, groupby="group", n_genes=3)
    scrobust.pl.attention_markers(adata, kind="heatmap")


def test_markers_need_two_groups(small_pbmc, counts_model):
    adata = small_pbmc.copy()
    adata.obs["one"] = "all"
    with pytest.raises(ValueError, match="at least 2 groups"):
        scrobust.tl.marker_genes(adata, counts_model, groupby="one", n_genes=3)


def test_a_gmt_file_with_a_byte_order_mark_reads_clean_names(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("\ufeffbeta\tdesc\tINS\tIAPP\nalpha\tdesc\tGCG\n", encoding="utf-8")
    assert list(scrobust.data.read_gmt(path)) == ["beta", "alpha"]


def test_peak_coordinates_stored_as_text_are_compared_as_numbers():
    import pandas as pd

    var = pd.DataFrame({"chrom": ["chr1", "chr2"], "start": ["900", "20"], "end": ["1000", "25"]}, index=["p1", "p2"])
    names = scrobust.data.peak_names(ad.AnnData(np.ones((1, 2)), var=var))
    assert list(names) == ["chr1:900-1000", "chr2:20-25"]
    var["start"] = ["9a", "20"]
    with pytest.raises(ValueError, match="not whole numbers"):
        scrobust.data.peak_names(ad.AnnData(np.ones((1, 2)), var=var))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a whole number of at least 2"),
        ({"max_steps": -5}, "max_steps must be a whole number of at least 0"),
        ({"validation_size": 1.5}, "validation_size must be in"),
    ],
)
def test_bad_pretraining_arguments_are_named(small_pbmc, kwargs, message):
    scrobust.SCRobust.setup_anndata(small_pbmc)
    model = scrobust.SCRobust(small_pbmc, **TINY)
    with pytest.raises(ValueError, match=message):
        model.pretrain(knn_monitor=False, **kwargs, **QUIET)


def test_duplicated_peaks_get_a_fix_that_works_for_peaks():
    import pandas as pd

    peaks = ad.AnnData(
        np.ones((3, 3), dtype=np.float32), var=pd.DataFrame(index=["chr1:10-15", "chr1:10-15", "chr2:1-9"])
    )
    with pytest.raises(ValueError, match="duplicated peaks") as refused:
        scrobust.SCRobust.setup_anndata(peaks, modality="atac")
    assert "var_names_make_unique" not in str(refused.value)  # its "-1" suffix breaks a peak's name


def test_a_model_loaded_onto_labelled_cells_keeps_their_labels_and_trains_further(small_pbmc, counts_model, tmp_path):
    counts_model.save(tmp_path / "m")
    cells = small_pbmc.copy()
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(object)
    cells.obs.iloc[:10, cells.obs.columns.get_loc("cell_type")] = np.nan  # unlabelled cells stay unlabelled
    loaded = scrobust.SCRobust.load(tmp_path / "m", adata=cells)
    kept = loaded.adata.obs["cell_type"].astype(str).to_numpy()
    assert (kept[10:] == small_pbmc.obs["cell_type"].astype(str).to_numpy()[10:]).all()
    assert (kept[:10] == "Unknown").all()
    loaded.train(max_epochs=1, n_genes=64, **QUIET)
    query = small_pbmc.copy()
    query.obs["cell_type"] = "a type the model never saw"  # a query's own labels are never read
    assert counts_model.predict(query).shape == (query.n_obs,)


@pytest.mark.parametrize("allowed, message", [("CD19+ B", "a list of cell types, not a string"), ([], "at least one")])
def test_allowed_labels_must_be_a_non_empty_list(small_pbmc, counts_model, allowed, message):
    with pytest.raises(ValueError, match=message):
        counts_model.predict(small_pbmc, allowed_labels=allowed)


def test_token_dropout_must_be_a_share(small_pbmc, counts_model):
    with pytest.raises(ValueError, match=r"token_dropout must be in \[0, 1\)"):
        counts_model.train(max_epochs=1, token_dropout=1.5, **QUIET)


def test_add_dropout_names_a_missing_layer(small_pbmc):
    with pytest.raises(ValueError, match="layer 'nope' is not in adata.layers"):
        scrobust.pp.add_dropout(small_pbmc, 0.3, layer="nope")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "8GB"])
def test_the_dense_budget_refuses_values_that_are_not_byte_counts(value):
    with pytest.raises(ValueError, match="max_dense_bytes must be a positive integer or None"):
        scrobust.settings.max_dense_bytes = value
    assert scrobust.settings.max_dense_bytes is not None  # unchanged


def test_add_dropout_takes_a_dense_float16_matrix(small_pbmc):
    adata = small_pbmc.copy()
    adata.X = adata.X.toarray().astype(np.float16)
    noisy = scrobust.pp.add_dropout(adata, 0.5)
    kept = noisy.X.toarray()
    assert 0 < np.count_nonzero(kept) < np.count_nonzero(adata.X)
    assert np.all((kept == 0) | (kept == adata.X.astype(np.float32)))  # entries are kept or set to 0


@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_tfidf_refuses_values_that_are_not_counts(bad):
    peaks = np.array([[bad, 2.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="negative|NaN"):
        scrobust.pp.tfidf(peaks)


def test_select_peaks_names_a_count_that_is_not_whole():
    peaks = ad.AnnData(np.array([[1, 0, 2], [1, 1, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match="n_top must be a whole number of at least 1"):
        scrobust.pp.select_peaks(peaks, n_top=2.0)


def test_predicting_no_cells_gives_an_empty_result(small_pbmc, counts_model):
    assert counts_model.predict_proba(small_pbmc, indices=[]).shape == (0, len(counts_model.cell_types_))
    assert counts_model.predict(small_pbmc, indices=[]).shape == (0,)


@pytest.mark.parametrize("dtype", ["object", "category"])
def test_confusion_leaves_out_cells_without_a_true_label_and_orders_numbers_as_numbers(dtype):
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    truth = pd.Series([0, 2, 10, np.nan, 2, 10], dtype=object).astype(dtype)
    adata = ad.AnnData(
        np.zeros((6, 1)), obs=pd.DataFrame({"truth": truth.array, "pred": ["0", "2", "10", "2", "2", "0"]})
    )
    ax = scrobust.pl.confusion(adata, true="truth", pred="pred", normalize=False)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["0", "2", "10"]  # no "nan" row, numbers in numeric order
    assert sum(int(t.get_text()) for t in ax.texts) == 5  # the five labelled cells


# Found by the third review (stop 34): scATAC queries, pre-training on a query.


def test_unlabelled_cells_in_another_scale_than_the_reference_are_refused(small_pbmc):
    reference, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    reference.X = reference.X.astype(np.int32)  # counts stored as integers, as in the demo data
    sc.pp.normalize_total(query)
    sc.pp.log1p(query)
    with pytest.raises(ValueError, match="unlabelled cells"):
        scrobust.tl.fit_annotator(reference, "cell_type", unlabelled=query, **FIT)


def test_unlabelled_cells_missing_the_layer_are_named(small_pbmc):
    reference, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    reference.layers["counts"] = reference.X.copy()
    with pytest.raises(ValueError, match="unlabelled cells"):
        scrobust.tl.fit_annotator(reference, "cell_type", unlabelled=query, layer="counts", **FIT)


def test_a_peak_query_without_shared_peaks_is_told_about_peaks():
    from pathlib import Path

    from scrobust_sc.data._alignment import match_genes

    peaks = ad.read_h5ad(Path(__file__).parent / "data" / "granja_atac_fixture.h5ad")
    names = scrobust.data.peak_names(peaks)
    shifted = names.str.replace(r":(\d+)-", lambda m: f":{int(m.group(1)) + 50}-", regex=True)
    assert shifted[0] != names[0]
    with pytest.raises(ValueError, match="peaks are matched by their exact coordinates") as refused:
        match_genes(shifted, names, features="peaks")
    assert "gene_symbols" not in str(refused.value)


def test_cross_splits_without_known_test_cells_are_skipped_or_refused():
    from scrobust_sc.benchmark import cross_splits

    splits = cross_splits(["x", "x", "y", "y", "z", "z"], ["a", "b", "a", "b", "c", "c"])
    assert [s.name for s in splits] == ["x -> rest", "y -> rest"]  # z's own type is in no other group
    with pytest.raises(ValueError, match="no test cell of a type"):
        cross_splits(["x", "x", "y", "y"], ["a", "a", "b", "b"])


def test_benchmark_refuses_an_empty_method_list_before_creating_its_folder(tmp_path, capsys):
    from scrobust_sc.cli import main

    small = tmp_path / "small.h5ad"
    scrobust.data.pbmc_demo()[:60].copy().write_h5ad(small)
    for methods, message in ((",", "names no method"), ("logreg,foo", "Unknown methods")):
        out = tmp_path / f"out{len(methods)}"
        assert main(["benchmark", "--data", str(small), "--methods", methods, "--out", str(out), "--quick"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


# ---- found by the stop-35 review of scrobust's outputs in scanpy and anndata ----------------------
def test_label_categories_are_only_the_labels_some_cell_received(small_pbmc, counts_model):
    """An empty "Unknown" (or type) category breaks scanpy's grouping tools (rank_genes_groups, dotplot)."""
    query = small_pbmc.copy()
    scrobust.tl.annotate(query, model=counts_model, novelty_threshold=None, unknown_threshold=None)
    labels = query.obs["scrobust_label"]
    assert "Unknown" not in labels.cat.categories
    assert set(labels.cat.categories) == set(labels.astype(str))
    order = list(counts_model.cell_types_)
    assert list(labels.cat.categories) == [t for t in order if t in set(labels.astype(str))]
    sc.pp.normalize_total(query)
    sc.pp.log1p(query)
    sc.tl.rank_genes_groups(query, "scrobust_label")
    sc.pl.dotplot(query, list(query.var_names[:3]), groupby="scrobust_label", show=False)


def test_pathway_labels_hold_no_empty_unknown_category(small_pbmc, counts_model):
    genes = list(small_pbmc.var_names)
    sets = {"first": genes[:5], "second": genes[5:10], "third": genes[10:15]}
    query = small_pbmc.copy()
    scrobust.tl.annotate_pathways(query, counts_model, gene_sets=sets)
    labels = query.obs["scrobust_pathway_label"]
    assert set(labels.cat.categories) == set(labels.astype(str)) and "Unknown" not in labels.cat.categories


def test_a_second_annotation_leaves_no_stale_cell_novelty(small_pbmc, counts_model):
    query = small_pbmc.copy()
    scrobust.tl.annotate(query, model=counts_model)
    assert "scrobust_cell_novelty" in query.obs
    scrobust.tl.annotate(query, model=counts_model, novelty_neighbors=None)
    assert "scrobust_cell_novelty" not in query.obs


def test_label_colours_are_dropped_when_the_labels_change(small_pbmc, counts_model):
    query = small_pbmc.copy()
    scrobust.tl.annotate(query, model=counts_model, novelty_threshold=None, unknown_threshold=None)
    sc.pl._utils._set_default_colors_for_categorical_obs(query, "scrobust_label")
    colours = list(query.uns["scrobust_label_colors"])
    scrobust.tl.annotate(query, model=counts_model, novelty_threshold=None, unknown_threshold=None)
    assert list(query.uns["scrobust_label_colors"]) == colours  # the same categories keep their colours
    scrobust.tl.annotate(
        query,
        model=counts_model,
        novelty_threshold=None,
        unknown_threshold=None,
        allowed_labels=list(counts_model.cell_types_)[:2],
    )
    assert "scrobust_label_colors" not in query.uns


# ---- found by the stop-35 review of reliability.md's promises ------------------------------------
def _registrations(model) -> int:
    return len(model._per_instance_manager_store.get(model.id, {}))


def test_calls_on_a_query_keep_no_copy_of_it_alive(small_pbmc, counts_model):
    """Each call on a query aligned a copy that scvi-tools' registry kept: memory grew call by call."""
    query = small_pbmc[:, ::-1].copy()  # another gene order: every call aligns a copy
    before = _registrations(counts_model)
    for _ in range(3):
        counts_model.predict(query)
        counts_model.predict_proba(query)
        counts_model.predict_novelty(query)
        counts_model.get_latent_representation(query)
    scrobust.tl.annotate(query, model=counts_model)
    assert _registrations(counts_model) <= before + 1


def test_an_aligned_query_is_not_written_into(small_pbmc, counts_model):
    aligned, _ = counts_model.align_query(small_pbmc[:, ::-1].copy())
    obs_columns, uns_keys = list(aligned.obs.columns), set(aligned.uns)
    expected = counts_model.get_latent_representation(small_pbmc)
    np.testing.assert_allclose(counts_model.get_latent_representation(aligned), expected, rtol=1e-5, atol=1e-6)
    counts_model.predict(aligned)
    assert list(aligned.obs.columns) == obs_columns and set(aligned.uns) == uns_keys


def test_pretraining_too_few_cells_for_a_validation_cell_runs_without_validation(small_pbmc, seeded):
    """8 cells at validation_size=0.1 give no validation cell: Lightning was asked for a loader that did not exist."""
    adata = small_pbmc[:8].copy()
    scrobust.SCRobust.setup_anndata(adata)
    model = scrobust.SCRobust(adata, **TINY)
    model.pretrain(max_steps=2, batch_size=4, **QUIET)
    assert model.history["contrastive_loss_train"].notna().to_numpy().any()


def test_markers_of_a_backed_dense_query_equal_those_in_memory(small_pbmc, counts_model, tmp_path):
    dense = small_pbmc.copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    backed = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    scrobust.tl.marker_genes(dense, counts_model, groupby="cell_type", n_genes=5)
    scrobust.tl.marker_genes(backed, counts_model, groupby="cell_type", n_genes=5)
    expected, got = dense.uns["scrobust_markers"], backed.uns["scrobust_markers"]
    for group in expected["names"].dtype.names:
        np.testing.assert_array_equal(got["names"][group], expected["names"][group])
        np.testing.assert_allclose(got["logfoldchanges"][group], expected["logfoldchanges"][group], rtol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "csr_matrix", "csr_array"])
def test_the_fix_named_for_nan_values_works_on_every_matrix_type(small_pbmc, kind):
    import re

    import scipy.sparse as sp

    adata = small_pbmc.copy()
    dense = adata.X.toarray().astype(np.float32)
    dense[3, 5] = np.nan
    adata.X = {"dense": dense, "csr_matrix": sp.csr_matrix(dense), "csr_array": sp.csr_array(dense)}[kind]
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        scrobust.SCRobust.setup_anndata(adata)
    fix = re.search(r"`(adata = adata\[.*?\.copy\(\))`", str(error.value)).group(1)
    namespace = {"adata": adata, "np": np}
    exec(fix, namespace)
    assert namespace["adata"].n_obs == small_pbmc.n_obs - 1
    scrobust.SCRobust.setup_anndata(namespace["adata"])


def _with_symbols(adata, duplicate: bool):
    out = adata.copy()
    symbols = out.var_names.astype(str).to_numpy().copy()
    if duplicate:
        symbols[1] = symbols[0]
    out.var["symbol"] = symbols
    out.var_names = [f"ENSG{i:011d}" for i in range(out.n_vars)]
    return out


def test_duplicated_symbols_are_blamed_on_their_column_with_a_fix_that_works(small_pbmc):
    import re

    adata = _with_symbols(small_pbmc, duplicate=True)
    with pytest.raises(ValueError, match=r"adata.var\['symbol'\] contains 1 duplicated gene names") as error:
        scrobust.SCRobust.setup_anndata(adata, gene_symbols="symbol")
    fix = re.search(r"`(adata\.var\['symbol'\] = .*?)`", str(error.value)).group(1)
    exec(fix, {"adata": adata, "ad": ad, "pd": __import__("pandas")})
    scrobust.SCRobust.setup_anndata(adata, gene_symbols="symbol")


def test_a_query_with_duplicated_symbols_is_blamed_on_their_column(small_pbmc, counts_model):
    query = _with_symbols(small_pbmc, duplicate=True)
    with pytest.raises(ValueError, match=r"adata.var\['symbol'\] contains 1 duplicated gene names"):
        counts_model.align_query(query, gene_symbols="symbol")


def test_a_query_without_x_is_told_the_route_that_reads_a_layer(small_pbmc, counts_model):
    query = ad.AnnData(obs=small_pbmc.obs, var=small_pbmc.var, layers={"counts": small_pbmc.X})
    with pytest.raises(ValueError, match=r"tl.annotate\(adata, model=model, layer="):
        counts_model.predict(query)
    scrobust.tl.annotate(query, model=counts_model, layer="counts")  # the route the message names works


def test_ensembl_ids_with_version_suffixes_are_told_to_strip_them(small_pbmc, seeded):
    reference = _with_symbols(small_pbmc, duplicate=False)
    model = scrobust.tl.fit_annotator(reference, "cell_type", **FIT)
    query = reference.copy()
    query.var_names = [f"{g}.7" for g in reference.var_names]
    with pytest.raises(ValueError, match="version suffix") as error:
        model.predict(query)
    assert "str.replace" in str(error.value)


@pytest.mark.parametrize("labels", ["int", "bool"])
def test_numeric_labels_at_setup_are_refused_with_the_fix_and_nothing_written(small_pbmc, labels):
    adata = small_pbmc.copy()
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    adata.obs["group"] = codes.astype(np.int64) if labels == "int" else codes % 2 == 0
    columns = list(adata.obs.columns)
    with pytest.raises(ValueError, match=r"adata.obs\['group'\] holds .*labels must be text.*astype\(str\)"):
        scrobust.SCRobust.setup_anndata(adata, labels_key="group")
    assert list(adata.obs.columns) == columns and "_scvi_uuid" not in adata.uns
    adata.obs["group"] = adata.obs["group"].astype(str)  # the fix the message names
    scrobust.SCRobust.setup_anndata(adata, labels_key="group")


def test_a_batch_column_with_missing_values_is_refused_with_the_fix(small_pbmc):
    adata = small_pbmc.copy()
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 3 == 0, None, "s1")
    with pytest.raises(ValueError, match=r"adata.obs\['sample'\] has \d+ missing values"):
        scrobust.SCRobust.setup_anndata(adata, batch_key="sample")
    assert "_scvi_uuid" not in adata.uns


def test_ctrl_c_stops_the_one_call_wrappers_and_is_recorded_by_the_model(small_pbmc, seeded):
    """The model's methods return after Ctrl+C (a session keeps its model); tl.annotate must not go on."""
    from .test_checkpoint import CtrlCAt

    stop = {"callbacks": [CtrlCAt(0)], "max_steps": 20, **QUIET}
    with pytest.raises(KeyboardInterrupt, match="Pre-training was interrupted"):
        scrobust.tl.fit_annotator(small_pbmc, "cell_type", model_kwargs=TINY, pretrain_kwargs=stop)
    query = small_pbmc.copy()
    with pytest.raises(KeyboardInterrupt, match="Pre-training was interrupted"):
        scrobust.tl.annotate(query, labels_key="cell_type", model_kwargs=TINY, pretrain_kwargs=stop)
    assert "scrobust_label" not in query.obs
    adata = small_pbmc.copy()
    scrobust.SCRobust.setup_anndata(adata)
    model = scrobust.SCRobust(adata, **TINY)
    assert model.interrupted_ is False
    model.pretrain(**stop)
    assert model.interrupted_ is True
    model.pretrain(max_steps=2, **QUIET)
    assert model.interrupted_ is False


# ---- found by the stop-35 review of the code against METHOD.md -----------------------------------
def _log_normalised(adata, target_sum):
    out = adata.copy()
    out.X = out.X.astype(np.float32)
    sc.pp.normalize_total(out, target_sum=target_sum)
    sc.pp.log1p(out)
    return out


def test_log_normalised_input_of_any_library_size_reads_as_its_counts(small_pbmc, seeded):
    """scanpy's default normalize_total scales to the median library, not 10,000: the same cell must read the same."""
    from scrobust_sc.data import log_normalized_moments

    at_10k = _log_normalised(small_pbmc, 1e4)
    at_median = _log_normalised(small_pbmc, None)  # scanpy's default
    assert not np.allclose(at_10k.X.toarray(), at_median.X.toarray())
    scrobust.SCRobust.setup_anndata(at_10k)
    model = scrobust.SCRobust(at_10k, **TINY)
    np.testing.assert_allclose(
        model.get_latent_representation(at_median), model.get_latent_representation(at_10k), rtol=1e-4, atol=1e-5
    )
    for got, expected in zip(
        log_normalized_moments(at_median.X, input_is_log=True),
        log_normalized_moments(at_10k.X, input_is_log=True),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    counts = small_pbmc.copy()
    scrobust.SCRobust.setup_anndata(counts)
    from_counts = scrobust.SCRobust(counts, **TINY)
    np.testing.assert_allclose(
        from_counts.module.hvg_score.numpy(), model.module.hvg_score.numpy(), rtol=1e-4, atol=1e-6
    )  # the gene statistics of log input at any scale are those of its counts


def test_a_query_of_lower_case_genes_gets_the_no_overlap_message(counts_model, small_pbmc):
    """Clone names such as RP11-34P13.4 collide once a version-like suffix is dropped: the hint must not fail."""
    query = small_pbmc.copy()
    query.var_names = [g.lower() for g in query.var_names]
    with pytest.raises(ValueError, match="genes are in the query"):
        counts_model.predict(query)
    import pandas as pd

    from scrobust_sc.data._alignment import _version_suffix_hint

    names = pd.Index(["RP11-1.4", "RP11-1.5", "ENSG00000000001.7"])
    assert _version_suffix_hint(names, pd.Index(["RP11-1", "ENSG00000000001", "X"])) != ""


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_or_empty_gene_names_are_refused(small_pbmc, missing):
    adata = small_pbmc.copy()
    names = adata.var_names.astype(object).to_numpy().copy()
    names[0] = missing
    adata.var_names = names
    with pytest.raises(ValueError, match="missing gene names"):
        scrobust.SCRobust.setup_anndata(adata)
    symbols = small_pbmc.copy()
    symbols.var["sym"] = names
    with pytest.raises(ValueError, match="missing gene names"):
        scrobust.SCRobust.setup_anndata(symbols, gene_symbols="sym")


def test_a_matrix_storing_an_entry_twice_ranks_genes_as_its_sum(small_pbmc):
    """A CSR matrix may store one cell/gene entry as 1 + 2; its statistics must be those of the 3 it means."""
    import scipy.sparse as sp

    from scrobust_sc.data import expressed_fraction, log_normalized_moments

    canonical = sp.csr_matrix(small_pbmc.X, dtype=np.float32)
    data, indices = [], []
    for r in range(canonical.shape[0]):  # each entry stored twice in its row: x - floor(x/2), then floor(x/2)
        row = slice(canonical.indptr[r], canonical.indptr[r + 1])
        half = np.floor(canonical.data[row] / 2)
        data += [canonical.data[row] - half, half]
        indices += [canonical.indices[row], canonical.indices[row]]
    stored = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), 2 * canonical.indptr), shape=canonical.shape)
    assert stored.nnz == 2 * canonical.nnz and np.array_equal(stored.toarray(), canonical.toarray())
    np.testing.assert_allclose(expressed_fraction(stored), expressed_fraction(canonical))
    for got, expected in zip(
        log_normalized_moments(stored, input_is_log=False),
        log_normalized_moments(canonical, input_is_log=False),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_query_too_small_for_neighbourhoods_records_each_cells_own_novelty(small_pbmc, counts_model):
    query = small_pbmc[:120].copy()  # under 10 neighbourhoods of 15: each cell's own novelty is read
    scrobust.tl.annotate(query, model=counts_model)
    assert query.uns["scrobust"]["params"]["novelty_neighbors"] is None
    assert "scrobust_cell_novelty" not in query.obs


@pytest.fixture
def layer_model(small_pbmc, seeded):
    """A TINY model set up on ``layers["counts"]`` of a reference whose ``X`` is log-normalised."""
    return scrobust.tl.fit_annotator(_log_query_with_counts_layer(small_pbmc), "cell_type", layer="counts", **FIT)


def test_a_layer_model_annotates_a_query_with_its_counts_in_x(small_pbmc, layer_model):
    """Found by review: a fresh query (counts in X, no layers) could not be annotated by such a model."""
    expected = layer_model.predict_proba(_log_query_with_counts_layer(small_pbmc)).to_numpy()
    query = small_pbmc.copy()
    with pytest.raises(ValueError, match=r"lacks.*layer='X'.*--layer X"):
        scrobust.tl.annotate(query, model=layer_model)
    with pytest.raises(ValueError, match=r"lacks.*layer='X'.*adata.layers\['counts'\] = adata.X"):
        layer_model.predict(query)
    scrobust.tl.annotate(query, model=layer_model, layer="X", novelty_threshold=None)
    np.testing.assert_allclose(query.obsm["scrobust_probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert not query.layers and query.uns["scrobust"]["params"]["layer"] == "X"
    with pytest.raises(ValueError, match="declared as raw counts but holds non-integer values"):
        scrobust.tl.annotate(_log_query_with_counts_layer(small_pbmc), model=layer_model, layer="X")
    query.layers["counts"] = query.X
    layer_model.predict(query)  # the fix the model's methods name works
    scrobust.tl.annotate(query, model=layer_model)  # the model's layer, when the query has it


def test_a_layer_model_streams_a_backed_query_with_its_counts_in_x(small_pbmc, layer_model, tmp_path):
    """Found by review: layer='X' on a backed query crashed in the gene alignment."""
    small_pbmc.write_h5ad(tmp_path / "q.h5ad")
    in_memory = small_pbmc.copy()
    scrobust.tl.annotate(in_memory, model=layer_model, layer="X", novelty_threshold=None)
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    scrobust.tl.annotate(backed, model=layer_model, layer="X", novelty_threshold=None)
    np.testing.assert_allclose(
        backed.obsm["scrobust_probabilities"], in_memory.obsm["scrobust_probabilities"], rtol=1e-5, atol=1e-6
    )
    both = ad.read_h5ad(tmp_path / "q.h5ad")
    both.layers["counts"] = both.X.copy()
    both.write_h5ad(tmp_path / "both.h5ad")
    with pytest.raises(
        ValueError, match=r"backed query is read where the model reads its counts \(layers\['counts'\].*in memory"
    ):
        scrobust.tl.annotate(ad.read_h5ad(tmp_path / "both.h5ad", backed="r"), model=layer_model, layer="X")


def test_the_gene_report_recorded_is_that_of_the_query_read(small_pbmc, counts_model):
    """Found by review: an aligned query was recorded with the report of the query read before it."""
    panel = small_pbmc[:, 200:].copy()  # 600 of the model's 800 genes
    scrobust.tl.annotate(panel, model=counts_model)
    assert panel.uns["scrobust"]["gene_alignment"]["n_genes_found"] == 600
    aligned, report = counts_model.align_query(small_pbmc)
    assert report.n_found == 800
    scrobust.tl.annotate(aligned, model=counts_model)
    assert aligned.uns["scrobust"]["gene_alignment"]["n_genes_found"] == 800
    scrobust.tl.embed(panel, counts_model)
    scrobust.tl.embed(aligned, counts_model, key_added="X_e")
    assert aligned.uns["scrobust"]["embed"]["gene_alignment"]["n_genes_found"] == 800
    assert counts_model.last_alignment_["n_genes_found"] == 800
    counts_model.get_latent_representation()  # the model's own AnnData: no query report
    assert counts_model.last_alignment_ is None


def _refused_query(small_pbmc, case):
    """A query that a model trained on ``small_pbmc``'s counts refuses, and the ``layer`` it is read from."""
    query = small_pbmc.copy()
    if case == "missing layer":
        return query, "counts"
    if case == "no shared gene":
        query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    elif case == "negative values":
        query.X = query.X.copy()
        query.X.data[:5] *= -1
    elif case == "log-normalised query":
        sc.pp.normalize_total(query)
        sc.pp.log1p(query)
    return query, None


def test_annotate_with_a_reference_checks_the_query_before_any_training(small_pbmc, counts_model, monkeypatch):
    """A query the trained model would refuse is refused before training, with the same message."""

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the query was checked")

    monkeypatch.setattr(scrobust.SCRobust, "pretrain", no_training)
    monkeypatch.setattr(scrobust.SCRobust, "train", no_training)
    for case in ("missing layer", "no shared gene", "negative values", "log-normalised query"):
        query, layer = _refused_query(small_pbmc, case)
        reference = small_pbmc.copy()
        if layer is not None:
            reference.layers[layer] = reference.X.copy()
            expected = None  # the model set up on that layer names it, and the fix
        else:
            with pytest.raises(ValueError) as after_training:  # what the trained model says of this query
                counts_model.predict_proba(query)
            expected = str(after_training.value)
        with pytest.raises(ValueError) as refused:
            scrobust.tl.annotate(
                query, reference=reference, labels_key="cell_type", layer=layer, model_kwargs=TINY, pretrain_steps=0
            )
        if expected is None:
            assert "layers['counts'], which the query lacks" in str(refused.value)
            assert "adata.layers['counts'] = adata.X" in str(refused.value)
        else:
            assert str(refused.value) == expected, case


def _ensembl_ids_with_symbols(adata):
    """``adata`` with made-up Ensembl IDs as ``var_names`` and its symbols in ``var["symbol"]``."""
    query = adata.copy()
    query.var["symbol"] = query.var_names.astype(str)
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    return query


def test_the_tools_take_the_gene_symbols_the_no_overlap_error_names(small_pbmc, counts_model):
    """Found by review: the error said to pass `gene_symbols=`, which the tools did not take."""
    expected = counts_model.predict_proba(small_pbmc).to_numpy()
    embedding = counts_model.get_latent_representation(small_pbmc)
    query = _ensembl_ids_with_symbols(small_pbmc)
    with pytest.raises(ValueError, match=r"gene_symbols=.*tl.annotate.*--gene-symbols"):
        scrobust.tl.annotate(query, model=counts_model)
    scrobust.tl.annotate(query, model=counts_model, gene_symbols="symbol", novelty_threshold=None)
    np.testing.assert_allclose(query.obsm["scrobust_probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert query.uns["scrobust"]["gene_alignment"]["n_genes_found"] == small_pbmc.n_vars
    assert query.uns["scrobust"]["params"]["gene_symbols"] == "symbol"
    scrobust.tl.embed(query, counts_model, gene_symbols="symbol", key_added="X_e")
    np.testing.assert_allclose(query.obsm["X_e"], embedding, rtol=1e-5, atol=1e-6)
    assert query.uns["scrobust"]["embed"]["gene_alignment"]["n_genes_found"] == small_pbmc.n_vars
    scrobust.tl.marker_genes(query, counts_model, groupby="cell_type", gene_symbols="symbol", n_genes=3)
    names = query.uns["scrobust_markers"]["names"]
    assert all(str(n).startswith("ENSG") for g in names.dtype.names for n in names[g])  # scanpy's var_names
    assert list(query.var_names[:2]) == ["ENSG00000000000", "ENSG00000000001"] and not query.layers
    with pytest.raises(ValueError, match="gene_symbols='nope' is not a column of adata.var"):
        scrobust.tl.embed(query, counts_model, gene_symbols="nope")


def test_annotate_with_a_reference_matches_the_query_by_its_gene_symbols(small_pbmc, seeded):
    query = _ensembl_ids_with_symbols(small_pbmc[100:])
    scrobust.tl.annotate(
        query,
        reference=small_pbmc[:100].copy(),
        labels_key="cell_type",
        gene_symbols="symbol",
        pretrain_on_query=True,
        pretrain_steps=2,
        max_epochs=1,
        model_kwargs=TINY,
        pretrain_kwargs=QUIET,
        train_kwargs={"n_genes": 64, **QUIET},
    )
    assert query.uns["scrobust"]["gene_alignment"]["n_genes_found"] == small_pbmc.n_vars


def test_the_registered_anndata_normalised_in_place_is_refused(small_pbmc, seeded):
    """Found by review: after `sc.pp.log1p` in place, the model's own AnnData was read as counts, silently."""
    adata = small_pbmc.copy()
    scrobust.SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = scrobust.SCRobust(adata, **TINY)
    model.train(max_epochs=1, n_genes=64, **QUIET)
    expected = model.predict_proba().to_numpy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    calls = {
        "embed": lambda: scrobust.tl.embed(adata, model),
        "annotate": lambda: scrobust.tl.annotate(adata, model=model),
        "predict": lambda: model.predict(),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"changed in place since `setup_anndata`.*layer='counts'"):
            call()
        assert "X_scrobust" not in adata.obsm and "scrobust_label" not in adata.obs, name
    scrobust.tl.annotate(adata, model=model, layer="counts", novelty_threshold=None)  # the named fix works
    np.testing.assert_allclose(adata.obsm["scrobust_probabilities"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("category", ["Unknown", "unlabelled"])
def test_unlabelled_cells_are_never_a_taught_type_whatever_the_unlabeled_category(small_pbmc, seeded, category):
    """NaN, the ``unlabeled_category`` and "Unknown" (the call for novel cells) are never taught as types."""
    reference, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    reference.obs["known"] = reference.obs["cell_type"].astype(object)
    reference.obs.loc[reference.obs_names[:20], "known"] = np.nan
    reference.obs.loc[reference.obs_names[20:30], "known"] = "unlabelled"
    reference.obs.loc[reference.obs_names[30:40], "known"] = "Unknown"
    before = reference.obs.copy()
    setup = {"unlabeled_category": category}
    model = scrobust.tl.fit_annotator(reference, "known", unlabelled=query, setup_kwargs=setup, **FIT)
    taught = set(reference.obs["known"].iloc[40:].astype(str))
    if category == "Unknown":  # the default: a type named "unlabelled" is the user's to teach
        taught.add("unlabelled")
    assert set(model.cell_types_) == taught
    labels = model.adata.obs["known"].astype(str).to_numpy()
    assert (labels[:40][reference.obs["known"].iloc[:40].astype(str) != "unlabelled"] == category).all()
    assert (labels[reference.n_obs :] == category).all()  # the query's cells: pre-trained on, never taught
    pd.testing.assert_frame_equal(reference.obs, before)
    scrobust.tl.annotate(
        reference,
        labels_key="known",
        setup_kwargs=setup,
        model_kwargs=TINY,
        pretrain_steps=0,
        max_epochs=2,
        train_kwargs={"n_genes": 64, **QUIET},
    )
    assert set(reference.uns["scrobust"]["cell_types"]) == taught


def test_setup_kwargs_batch_key_reads_the_users_column(small_pbmc, seeded, caplog):
    from scvi.data._constants import _SETUP_ARGS_KEY

    reference, query = small_pbmc[:150].copy(), small_pbmc[150:].copy()
    reference.obs["batch"] = np.arange(reference.n_obs) % 2  # numbers: converted to text, as labels are
    query.obs["batch"] = "q"
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        model = scrobust.tl.fit_annotator(
            reference, "cell_type", unlabelled=query, setup_kwargs={"batch_key": "batch"}, **FIT
        )
    assert model.registry_[_SETUP_ARGS_KEY]["batch_key"] == "batch"
    assert list(model.adata.obs["batch"].astype(str)) == [*map(str, reference.obs["batch"]), *query.obs["batch"]]
    assert "does not condition on batches" in caplog.text  # recorded only: no batch effect is corrected
    with pytest.raises(ValueError, match=r"batch_key='sample' is not a column of adata.obs \(columns: \[.*'batch'\]\)"):
        scrobust.tl.fit_annotator(reference, "cell_type", setup_kwargs={"batch_key": "sample"}, **FIT)
    with pytest.raises(ValueError, match=r"query\.obs\['batch'\] = 'query'"):
        scrobust.tl.fit_annotator(
            reference, "cell_type", unlabelled=small_pbmc[150:].copy(), setup_kwargs={"batch_key": "batch"}, **FIT
        )


def test_review_of_the_new_query_paths(small_pbmc, layer_model, seeded, tmp_path, monkeypatch):
    """Found by a review of this release's query paths: each case failed or named a fix that did not work."""
    # tl.embed cannot read X for a model set up on a layer: the error names the fix that works for it
    with pytest.raises(ValueError, match=r"tl.embed.*adata.layers\['counts'\] = adata.X"):
        scrobust.tl.embed(small_pbmc.copy(), layer_model)
    # layer="X" trains on X, as tl.annotate reads it
    model = scrobust.tl.fit_annotator(small_pbmc, "cell_type", layer="X", **FIT)
    assert model.registry_["setup_args"]["layer"] is None
    # pretrain_on_query with gene_symbols keeps the query's obs, so its batch column is found
    query = _ensembl_ids_with_symbols(small_pbmc)
    reference = small_pbmc.copy()
    reference.obs["batch"] = "ref"
    query.obs["batch"] = "query"
    scrobust.tl.annotate(
        query,
        reference=reference,
        labels_key="cell_type",
        gene_symbols="symbol",
        pretrain_on_query=True,
        pretrain_steps=2,
        setup_kwargs={"batch_key": "batch"},
        model_kwargs=TINY,
        train_kwargs={"max_epochs": 1, **QUIET},
    )
    assert "scrobust_label" in query.obs
    # a backed query is checked before training on its first cells only, read into memory
    small_pbmc.write_h5ad(tmp_path / "q.h5ad")
    checked = []
    align = scrobust.SCRobust.align_query

    def spy(self, adata, *args, **kwargs):
        checked.append((adata.n_obs, adata.isbacked))
        return align(self, adata, *args, **kwargs)

    monkeypatch.setattr(scrobust.SCRobust, "align_query", spy)
    monkeypatch.setattr(scrobust.tl._annotate, "QUERY_CHECK_CELLS", 50)
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    scrobust.tl.annotate(
        backed,
        reference=small_pbmc,
        labels_key="cell_type",
        pretrain_steps=0,
        **{k: v for k, v in FIT.items() if k != "pretrain"},
    )
    assert checked[0] == (50, False)
