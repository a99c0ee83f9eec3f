import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

import scrobust_sc as scrobust
from scrobust_sc import benchmark
from scrobust_sc.cli import main


def test_cv_splits_match_stratified_kfold_and_keep_rare_types_in_training():
    labels = np.array(["a"] * 30 + ["b"] * 20 + ["rare"] * 3)
    splits = benchmark.cv_splits(labels, 5, seed=0)
    common = np.flatnonzero(labels != "rare")
    expected = list(StratifiedKFold(5, shuffle=True, random_state=0).split(common, labels[common]))
    tested = np.concatenate([s.test for s in splits])
    assert np.array_equal(np.sort(tested), common)  # every common cell tested exactly once
    for split, (_, test) in zip(splits, expected, strict=True):
        assert np.array_equal(split.test, common[test])
        assert np.intersect1d(split.train, split.test).size == 0
        assert set(np.flatnonzero(labels == "rare")) <= set(split.train)
        assert "rare" in split.note


def test_novel_splits_hide_the_type_from_training_and_test_all_its_cells():
    labels = np.array(["a"] * 30 + ["b"] * 20 + ["c"] * 15)
    for split in benchmark.novel_splits(labels):
        assert split.held_out not in set(labels[split.train])
        assert set(np.flatnonzero(labels == split.held_out)) <= set(split.test)


def test_cross_splits_train_on_one_group_and_drop_unlearnable_test_types():
    groups = np.array(["x"] * 4 + ["y"] * 4)
    labels = np.array(["a", "a", "b", "b", "a", "a", "c", "c"])
    first = benchmark.cross_splits(groups, labels)[0]
    assert set(groups[first.train]) == {"x"} and set(groups[first.test]) == {"y"}
    assert set(labels[first.test]) == {"a"} and "'c'" in first.note
    with pytest.raises(ValueError, match="single value"):
        benchmark.cross_splits(["x"] * 3, ["a", "b", "a"])


def test_classification_scores_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.choice(list("abcd"), 200)
    p = np.where(rng.random(200) < 0.7, y, rng.choice(list("abcd"), 200))
    scores = benchmark.classification_scores(y, p)
    assert scores["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert scores["accuracy"] == pytest.approx(np.mean(y == p))
    assert scores["class_accuracy:b"] == pytest.approx(np.mean(p[y == "b"] == "b"))


def test_novel_scores_count_rejected_known_cells_as_errors():
    y = np.array(["a", "a", "b", "b", "new", "new"])
    pred = np.array(["a", "a", "b", "b", "a", "b"])
    rejected = np.array([True, False, False, False, True, False])
    s = benchmark.novel_type_scores(y, pred, rejected, "new")
    assert s["unknown_accuracy"] == 0.5
    assert s["known_f1_macro_no_rejection"] == 1.0
    assert s["known_f1_macro"] < 1.0
    assert s["known_rejected"] == 0.25
    assert np.isnan(s["unknown_auroc"])  # no novelty score given


def test_novel_scores_rank_held_out_cells_by_novelty():
    y = np.array(["a", "a", "b", "b", "new", "new"])
    pred = np.array(["a", "a", "b", "b", "a", "b"])
    rejected = np.zeros(6, dtype=bool)
    novelty = np.array([0.1, 0.5, 0.2, 0.9, 0.8, 0.95])
    s = benchmark.novel_type_scores(y, pred, rejected, "new", novelty=novelty)
    assert s["unknown_auroc"] == pytest.approx(roc_auc_score(y == "new", novelty))
    assert s["unknown_auroc"] == pytest.approx(7 / 8)  # one known cell (0.9) outranks one novel (0.8)


def test_peer_novelty_is_one_minus_the_top_probability():
    proba = pd.DataFrame({"a": [0.9, 0.3], "b": [0.1, 0.7]})
    pred = benchmark.Prediction.from_proba(proba)
    assert pred.labels.tolist() == ["a", "b"]
    assert pred.novelty.tolist() == pytest.approx([0.1, 0.3])
    assert pred.rejected.tolist() == [False, False]


def test_a_failing_method_is_recorded_and_the_others_still_run(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("peer exploded")

    monkeypatch.setitem(benchmark.METHODS, "broken", broken)
    table = benchmark.run_benchmark(scrobust.data.pbmc_demo(), methods=["broken", "logreg"], quick=True)
    errors = table[table["metric"] == "error"]
    assert set(errors["method"]) == {"broken"} and errors["note"].str.contains("exploded").all()
    assert (table.query("method == 'logreg' and metric == 'f1_macro'")["value"] > 0).all()


def test_bad_protocol_methods_and_split_key_are_refused():
    adata = scrobust.data.pbmc_demo()
    with pytest.raises(ValueError, match="protocol"):
        benchmark.run_benchmark(adata, protocol="loo")
    with pytest.raises(ValueError, match="Unknown methods"):
        benchmark.run_benchmark(adata, methods=["seurat"])
    with pytest.raises(ValueError, match="split_key"):
        benchmark.run_benchmark(adata, protocol="cross", methods=["logreg"], quick=True)
    # a misspelt or unsupported scRobust option is refused before any method runs, not ignored
    with pytest.raises(ValueError, match=r"Unknown scrobust_options \['threads'\].*train_kwargs"):
        benchmark.run_benchmark(adata, methods=["logreg"], scrobust_options={"threads": 1, "pretrain": False})
    with pytest.raises(ValueError, match="Unknown scrobust_options"):
        benchmark.run_benchmark(adata, protocol="ablation", scrobust_options={"train_kwarg": {}})


def test_ablation_pretrains_once_a_split_and_scores_each_variant_as_if_run_alone(monkeypatch, one_thread):
    from scrobust_sc.benchmark._methods import QUICK_SCROBUST
    from scrobust_sc.train import PretrainingPlan

    steps = []
    step = PretrainingPlan.training_step

    def counted_step(self, batch, batch_idx):
        steps.append(batch_idx)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PretrainingPlan, "training_step", counted_step)
    # three of the five variants keep the suite short: two pre-trained ones and the one without
    variants = {name: benchmark.ABLATION_VARIANTS[name] for name in list(benchmark.ABLATION_VARIANTS)[:2] + ["HVGs"]}
    monkeypatch.setattr("scrobust_sc.benchmark._run.ABLATION_VARIANTS", variants)
    adata = scrobust.data.pbmc_demo()
    table = benchmark.run_benchmark(adata, protocol="ablation", folds=[0], quick=True)
    f1 = table.query("metric == 'f1_macro'").set_index("method")["value"]
    assert list(f1.index) == list(variants)
    # two variants start from a pre-trained encoder; the one pre-training is shared
    assert len(steps) == QUICK_SCROBUST["pretrain_kwargs"]["max_steps"]
    notes = table.drop_duplicates("method").set_index("method")["note"].fillna("")
    assert [benchmark.SHARED_PRETRAINING_NOTE in n for n in notes] == [False, False, True]
    hvg_alone = benchmark.run_benchmark(
        adata, methods=["scrobust"], folds=[0], quick=True, scrobust_options=benchmark.ABLATION_VARIANTS["HVGs"]
    )
    assert hvg_alone.query("metric == 'f1_macro'")["value"].item() == f1["HVGs"]


def test_ablation_variants_keep_the_users_other_training_options(monkeypatch):
    """A variant changes only its own keys: the user's n_genes and epochs reach every variant."""
    seen = {}

    def spy(train, test, labels_key, *, options=None, **_):
        seen[len(seen)] = options
        return benchmark.Prediction.from_proba(pd.DataFrame({"a": np.ones(test.n_obs)}))

    monkeypatch.setattr("scrobust_sc.benchmark._run.METHODS", {"scrobust": spy})
    monkeypatch.setattr("scrobust_sc.benchmark._run.share_pretraining", lambda options, folder: options)
    user = {"pretrain_on_test": True, "train_kwargs": {"n_genes": 200, "gene_selection": "unique", "max_epochs": 5}}
    table = benchmark.run_benchmark(
        scrobust.data.pbmc_demo(), protocol="ablation", folds=[0], quick=True, scrobust_options=user
    )
    variants = dict(zip(table.drop_duplicates("method")["method"], seen.values(), strict=True))
    assert list(variants) == list(benchmark.ABLATION_VARIANTS)
    for options in variants.values():
        assert options["pretrain_on_test"] is True
        assert options["train_kwargs"]["n_genes"] == 200 and options["train_kwargs"]["max_epochs"] == 5
    assert variants["random genes"]["train_kwargs"]["gene_selection"] == "random"
    assert variants["HVGs"]["train_kwargs"]["gene_selection"] == "hvg"
    assert variants["no pre-training"]["train_kwargs"]["gene_selection"] == "unique"  # the user's own
    assert variants["no pre-training"]["pretrain"] is False
    assert user["train_kwargs"]["gene_selection"] == "unique"  # the caller's options are not modified


def test_novel_protocol_scores_each_held_out_type():
    adata = scrobust.data.pbmc_demo()
    partial = []
    table = benchmark.run_benchmark(adata, protocol="novel", methods=["logreg"], quick=True, on_split=partial.append)
    assert len(partial) == 2 and partial[-1].equals(table)  # results so far, after every split
    assert set(partial[0]["fold"]) == {table["fold"].iloc[0]}
    folds = table.query("metric == 'unknown_accuracy'")["fold"]
    assert len(folds) == 2 and folds.str.startswith("novel ").all()
    assert "unknown_accuracy" in benchmark.markdown_table(table)


def test_benchmark_command_runs_every_method_quickly(tmp_path, one_thread):
    """The harness end to end: all five methods for real, CSV, summary and plots."""
    data = tmp_path / "pbmc.h5ad"
    scrobust.data.pbmc_demo().write_h5ad(data)
    out = tmp_path / "results"
    argv = ["benchmark", "--data", str(data), "--quick", "--out", str(out)]
    assert main([*argv, "--methods", "scrobust,celltypist,scanvi,logreg,knn"]) == 0
    table = pd.read_csv(out / "pbmc_cv.csv")
    assert list(table.columns) == benchmark.COLUMNS
    assert (table["metric"] != "error").all(), table.loc[table["metric"] == "error", "note"].tolist()
    f1 = table.query("metric == 'f1_macro'").groupby("method")["value"].count()
    assert f1.to_dict() == dict.fromkeys(["celltypist", "knn", "logreg", "scanvi", "scrobust"], 2)
    assert "| pbmc | 0 | scrobust |" in (out / "summary.md").read_text()
    assert (out / "f1_macro.png").exists() and (out / "class_accuracy_pbmc.png").exists()
    # the dropout protocol adds rows to the same report, with its curve
    assert main([*argv, "--methods", "logreg", "--protocol", "dropout", "--dropout-rates", "0", "0.5"]) == 0
    assert (out / "f1_vs_dropout.png").exists()


def test_benchmark_command_reports_bad_options(tmp_path, capsys):
    data = tmp_path / "pbmc.h5ad"
    scrobust.data.pbmc_demo().write_h5ad(data)
    assert main(["benchmark", "--data", str(data), "--labels-key", "nope", "--out", str(tmp_path)]) == 2
    assert "labels column 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(data), "--scrobust-options", "{", "--out", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["benchmark", "--data", str(data), "--scrobust-options", '{"epochs": 3}', "--out", str(tmp_path)]) == 2
    assert "Unknown scrobust_options ['epochs']" in capsys.readouterr().err


def test_atac_benchmark_runs_scrobust_and_the_peak_peers(one_thread):
    from pathlib import Path

    import anndata as ad

    peaks = ad.read_h5ad(Path(__file__).parent / "data" / "granja_atac_fixture.h5ad")
    table = benchmark.run_benchmark(
        peaks, methods=["scrobust", "logreg", "knn", "celltypist"], quick=True, modality="atac"
    )
    f1 = table.query("metric == 'f1_macro'").groupby("method")["value"].mean()
    assert set(f1.index) == {"scrobust", "logreg", "knn"}
    majority = benchmark.classification_scores(
        peaks.obs["cell_type"].astype(str), [peaks.obs["cell_type"].astype(str).mode()[0]] * peaks.n_obs
    )["f1_macro"]
    assert (f1 > majority).all()  # TF-IDF and LSI peers learn something on peaks
    errors = table[table["metric"] == "error"]
    assert set(errors["method"]) == {"celltypist"} and errors["note"].str.contains("RNA annotator").all()


def test_celltypist_runs_quietly_and_leaves_logging_as_it_was(caplog):
    # CellTypist logs every step at INFO level; a benchmark over folds drowned in it.
    import logging

    from scrobust_sc.benchmark._methods import celltypist_method

    adata = scrobust.data.pbmc_demo()
    train, test = adata[:400].copy(), adata[400:].copy()
    celltypist_logger = logging.getLogger("celltypist")
    level = celltypist_logger.level
    with caplog.at_level(logging.INFO):
        celltypist_method(train, test, "cell_type", quick=True)
    assert not [r for r in caplog.records if r.name.startswith("celltypist") and r.levelno < logging.WARNING]
    assert celltypist_logger.level == level


def test_peer_features_keeps_the_top_or_every_feature():
    from pathlib import Path

    import anndata as ad

    peaks = ad.read_h5ad(Path(__file__).parent / "data" / "granja_atac_fixture.h5ad")
    train, test = peaks[:200].copy(), peaks[200:].copy()
    xtr, xte = benchmark.peer_features(train, test, "atac", n_features=100)
    assert xtr.shape == (200, 100) and xte.shape == (test.n_obs, 100)
    xtr, xte = benchmark.peer_features(train, test, "atac", n_features=0)
    assert xtr.shape == (200, peaks.n_vars) and xte.shape == (test.n_obs, peaks.n_vars)
    genes = scrobust.data.pbmc_demo()
    xtr, _ = benchmark.peer_features(genes[:300].copy(), genes[300:].copy(), "rna", n_features=0)
    assert xtr.shape == (300, genes.n_vars)
    with pytest.raises(ValueError, match="n_features"):
        benchmark.peer_features(train, test, "atac", n_features=-1)


def test_run_benchmark_hands_peer_features_to_the_peers(monkeypatch):
    seen = []

    def spy(train, test, labels_key, *, n_features, **kwargs):
        seen.append(n_features)
        return benchmark.METHODS["logreg"](train, test, labels_key, n_features=n_features, **kwargs)

    monkeypatch.setitem(benchmark.METHODS, "spy", spy)
    benchmark.run_benchmark(scrobust.data.pbmc_demo(), methods=["spy"], quick=True, peer_features=0)
    assert seen == [0, 0]


def test_knn_on_every_gene_respects_the_dense_memory_budget(monkeypatch):
    # kNN on RNA densifies its features; with every gene that can be the whole matrix
    from scrobust_sc import settings
    from scrobust_sc.data import DenseBudgetError

    genes = scrobust.data.pbmc_demo()
    train, test = genes[:300].copy(), genes[300:].copy()
    monkeypatch.setattr(settings, "max_dense_bytes", genes.n_obs * 2000 * 4)
    benchmark.knn_method(train, test, "cell_type", n_features=2000)  # within the budget
    with pytest.raises(DenseBudgetError, match="peer features"):
        benchmark.knn_method(train, test, "cell_type", n_features=0)


def test_celltypist_reads_log2_scaled_input_as_it_reads_the_counts(caplog):
    """Files such as xin_pancreas ship log2(CPM + 1), which CellTypist refuses (max > 9.22)."""
    pytest.importorskip("celltypist")
    from scipy import sparse

    from scrobust_sc.benchmark._methods import celltypist_method

    from .conftest import demo_subset

    cells = demo_subset(120, 300)
    x = sparse.csr_matrix(cells.X, dtype=np.float64)
    cpm = sparse.diags(1e6 / np.asarray(x.sum(1)).ravel()) @ x
    log2 = cells.copy()
    log2.X = cpm.log1p() / np.log(2)  # log2(CPM + 1)
    assert log2.X.max() > 9.22
    train, test = np.arange(0, 120, 2), np.arange(1, 120, 2)
    from_counts = celltypist_method(cells[train].copy(), cells[test].copy(), "cell_type", quick=True)
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        from_log2 = celltypist_method(log2[train].copy(), log2[test].copy(), "cell_type", quick=True)
    assert "log2" in caplog.text
    np.testing.assert_array_equal(from_log2.labels, from_counts.labels)
    np.testing.assert_array_equal(from_log2.rejected, from_counts.rejected)


def test_pretrain_on_test_pretrains_on_the_test_cells_without_their_labels(monkeypatch):
    import scrobust_sc.tl as tl

    adata = scrobust.data.pbmc_demo()
    train, test = adata[:400].copy(), adata[400:].copy()
    seen = {}
    real_fit = tl.fit_annotator

    def spy(reference, labels_key, **kwargs):
        model = real_fit(reference, labels_key, **kwargs)
        seen[kwargs["pretrain"]] = (kwargs["unlabelled"], model)
        return model

    monkeypatch.setattr(tl, "fit_annotator", spy)
    for pretrain in (True, False):
        options = {"pretrain": pretrain, "pretrain_on_test": True}
        benchmark.scrobust_method(train, test, "cell_type", quick=True, options=options)
    unlabelled, model = seen[True]
    assert unlabelled is test
    assert model.adata.n_obs == train.n_obs + test.n_obs
    assert (model.adata.obs["cell_type"].iloc[train.n_obs :].astype(str) == "Unknown").all()
    assert seen[False][0] is None  # nothing to pre-train: the test cells are not needed


def test_benchmark_runs_of_other_folds_write_other_files(tmp_path):
    """Two runs of one protocol on other folds (e.g. side by side on two cores) must not overwrite each other."""
    data = tmp_path / "pbmc.h5ad"
    scrobust.data.pbmc_demo().write_h5ad(data)
    argv = ["benchmark", "--data", str(data), "--quick", "--methods", "logreg", "--tag", "t", "--out", str(tmp_path)]
    assert main([*argv, "--fold-index", "0"]) == 0
    assert main([*argv, "--fold-index", "1"]) == 0
    assert set(pd.read_csv(tmp_path / "pbmc_cv_t_folds0.csv")["fold"]) == {"fold 0"}
    assert set(pd.read_csv(tmp_path / "pbmc_cv_t_folds1.csv")["fold"]) == {"fold 1"}
