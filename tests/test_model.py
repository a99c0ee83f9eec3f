import warnings
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import stats
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import scrobust_sc as scrobust
from scrobust_sc import SCRobust

from .conftest import QUIET, TINY, demo_subset


def _paired_knn_accuracies(z_a, z_b, labels) -> tuple[np.ndarray, np.ndarray]:
    """kNN (k=15) accuracies of two embeddings of the same cells on the same 20 splits (5-fold CV, 4 repeats)."""
    splits = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=4, random_state=0).split(z_a, labels))
    return tuple(cross_val_score(KNeighborsClassifier(15), z, labels, cv=splits) for z in (z_a, z_b))


def test_pretraining_beats_random_weights_on_knn(pbmc, seeded):
    """Labels never reach pre-training; the embeddings must still separate cell types.

    800 steps is early in pre-training (kNN of the 5 coarse types: 0.71 with random
    weights, 0.77-0.81 after it, depending on the process's earlier random draws): the
    gain is judged against the noise of the splits, paired, not against a fixed margin.
    """
    SCRobust.setup_anndata(pbmc)
    model = SCRobust(pbmc)
    labels = pbmc.obs["cell_type_coarse"].to_numpy()
    random_weights = model.get_latent_representation()
    model.pretrain(max_steps=800, batch_size=64, **QUIET)
    before, after = _paired_knn_accuracies(random_weights, model.get_latent_representation(), labels)
    hist = model.history["contrastive_loss_train"].iloc[:, 0].to_numpy()
    assert hist[-1] < hist[0]  # the loss went down
    chance = np.log(2 * 64 - 1)  # NT-Xent of random projections: 1 positive among 2B - 1 views
    assert chance - hist[-1] > 0.3  # and clearly below chance
    gain = after - before
    assert (gain > 0).mean() >= 0.9, (before.mean(), after.mean(), gain)
    assert stats.ttest_rel(after, before, alternative="greater").pvalue < 0.001, (before.mean(), after.mean())


def test_history_has_no_elbo_columns(small_pbmc, seeded):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    model.pretrain(max_epochs=2, batch_size=16, **QUIET)
    keys = set(model.history)
    assert {
        "contrastive_loss_train",
        "expression_loss_train",
        "contrastive_loss_validation",
        "expression_loss_validation",
        "validation_loss",
    } <= keys
    assert not any("elbo" in k or "kl_" in k for k in keys)


def test_seed_gives_identical_losses_and_embeddings(small_pbmc):
    runs = []
    for _ in range(2):
        scvi.settings.seed = 7
        a = small_pbmc.copy()
        SCRobust.setup_anndata(a)
        model = SCRobust(a, **TINY)
        model.pretrain(max_steps=15, batch_size=16, **QUIET)
        runs.append((model.history["train_loss"].to_numpy(), model.get_latent_representation()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_save_load_round_trip(small_pbmc, tmp_path, seeded):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    model.pretrain(max_steps=5, batch_size=16, **QUIET)
    before = model.get_latent_representation()
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    loaded = SCRobust.load(tmp_path / "m", adata=small_pbmc)
    np.testing.assert_allclose(loaded.get_latent_representation(), before, rtol=1e-5, atol=1e-6)
    # without AnnData: embeds any AnnData with the model's genes
    bare = SCRobust.load(tmp_path / "m")
    np.testing.assert_allclose(bare.get_latent_representation(small_pbmc), before, rtol=1e-5, atol=1e-6)
    assert list(bare.history) == list(model.history)
    np.testing.assert_array_equal(bare.module.unique_score.numpy(), model.module.unique_score.numpy())


def test_loading_another_model_class_fails_clearly(small_pbmc, tmp_path):
    SCRobust.setup_anndata(small_pbmc)
    SCRobust(small_pbmc, **TINY).save(tmp_path / "m")

    class OtherModel(SCRobust):
        pass

    with pytest.raises(ValueError, match="holds a SCRobust model, not OtherModel"):
        OtherModel.load(tmp_path / "m")
    scvi_dir = tmp_path / "scvi"
    scvi_dir.mkdir()
    (scvi_dir / "model.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="never unpickles"):
        SCRobust.load(scvi_dir)


def test_query_in_other_gene_order_is_reindexed(small_pbmc, seeded):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    ref = model.get_latent_representation()
    rng = np.random.default_rng(0)
    query = small_pbmc[:, rng.permutation(small_pbmc.n_vars)].copy()
    del query.obs["_scvi_batch"], query.obs["_scvi_labels"]
    np.testing.assert_allclose(model.get_latent_representation(query), ref, rtol=1e-5, atol=1e-6)
    assert "_scvi_labels" not in query.obs  # the user's query is not modified


def test_query_with_a_gene_subset_is_embedded_and_reported(small_pbmc, caplog):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    query = small_pbmc[:, : small_pbmc.n_vars * 3 // 4].copy()
    with caplog.at_level("INFO", logger="scrobust_sc"):
        z = model.get_latent_representation(query)
    assert z.shape == (query.n_obs, 32)
    assert model.last_alignment_["n_genes_missing"] == small_pbmc.n_vars - query.n_vars
    assert "missing from the query" in caplog.text


def test_query_without_shared_genes_is_refused(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    query = ad.AnnData(small_pbmc.X, var={"gene_ids": small_pbmc.var["gene_ids"].to_numpy()}, obs=small_pbmc.obs[[]])
    query.var_names = small_pbmc.var["gene_ids"].to_numpy()
    with pytest.raises(ValueError, match="gene_symbols="):
        model.get_latent_representation(query)


def test_query_in_another_scale_is_refused(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    query = small_pbmc.copy()
    query.X = query.X.astype(np.float32)
    query.X.data = np.log1p(query.X.data * 1.37)
    with pytest.raises(ValueError, match="declared as raw counts"):
        model.get_latent_representation(query)


def test_every_layer_and_gene_selection_embeds(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, d_model=16, n_heads=2, n_layers=2)
    for layer in (1, 2, -1):
        for selection in ("unique", "mixed", "expressed", "hvg", "random"):
            z = model.get_latent_representation(layer=layer, gene_selection=selection, n_genes=40)
            assert z.shape == (small_pbmc.n_obs, 16) and np.isfinite(z).all()
    with pytest.raises(ValueError, match="gene_selection"):
        model.get_latent_representation(gene_selection="best")


def test_paper_preset_sizes(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    enc = SCRobust(small_pbmc, preset="paper").module.encoder
    assert enc.embedding.weight.shape[1] == 512 and enc.blocks[0].n_heads == 8


def test_tl_embed_writes_obsm_and_params(small_pbmc):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    assert scrobust.tl.embed(small_pbmc, model, n_genes=100) is None
    assert small_pbmc.obsm["X_scrobust"].shape == (small_pbmc.n_obs, 32)
    assert small_pbmc.uns["scrobust"]["embed"]["params"]["n_genes"] == 100
    out = scrobust.tl.embed(small_pbmc, model, key_added="X_other", copy=True)
    assert "X_other" in out.obsm and "X_other" not in small_pbmc.obsm


def test_batch_size_larger_than_the_data(small_pbmc, seeded):
    a = small_pbmc[:20].copy()
    SCRobust.setup_anndata(a)
    model = SCRobust(a, **TINY)
    model.pretrain(max_steps=2, batch_size=500, **QUIET)
    assert model.train_params_["pretrain"]["batch_size"] <= a.n_obs


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_training_without_a_validation_split(stage, seeded):
    adata = demo_subset(120, 400)
    scrobust.SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = scrobust.SCRobust(adata, **TINY)
    if stage == "pretrain":
        model.pretrain(max_steps=3, batch_size=16, validation_size=0.0, **QUIET)
    else:
        model.train(max_epochs=2, batch_size=16, n_genes=64, validation_size=0.0, **QUIET)
    assert model.get_latent_representation().shape == (120, 32)


def test_linear_path_reads_values_standardised_by_the_training_cells(small_pbmc):
    from scrobust_sc.data import inverse_std, log_normalized_moments
    from scrobust_sc.module._module import LINEAR_VALUE_CLIP

    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY, gene_linear_scaling="standardized")
    _, var = log_normalized_moments(adata.X, input_is_log=False)
    np.testing.assert_allclose(model.module.gene_scale.numpy(), inverse_std(var), rtol=1e-5)
    idx = torch.tensor([[0, 1, 2]])
    vals = torch.tensor([[1.0, 2.0, 1e6]])
    out = model.module._linear_values(idx, vals)
    expected = (vals * model.module.gene_scale[idx]).clamp(max=LINEAR_VALUE_CLIP)
    torch.testing.assert_close(out, expected)
    assert float(out[0, 2]) == LINEAR_VALUE_CLIP or float(model.module.gene_scale[2]) == 0.0
    plain = SCRobust(adata, **TINY, gene_linear_hvgs=None)  # default scaling: log1p values
    assert plain.module.gene_linear_scaling == "none"
    assert not hasattr(plain.module, "gene_scale")
    torch.testing.assert_close(plain.module._linear_values(idx, vals), vals)


def test_linear_path_reads_only_the_training_cells_highly_variable_genes(small_pbmc):
    import scanpy as sc

    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY, gene_linear_hvgs=300)
    mask = model.module.gene_linear_mask.numpy().astype(bool)
    expected = adata.copy()
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    sc.pp.highly_variable_genes(expected, n_top_genes=300, flavor="seurat")
    np.testing.assert_array_equal(mask, expected.var["highly_variable"].to_numpy())
    on, off = np.flatnonzero(mask)[0], np.flatnonzero(~mask)[0]
    out = model.module._linear_values(torch.tensor([[on, off]]), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ValueError, match="gene_linear_hvgs must be a positive number"):
        SCRobust(adata, **TINY, gene_linear_hvgs=0)


def test_auto_linear_genes_follow_the_logistic_regression_comparison(small_pbmc, monkeypatch):
    from scrobust_sc.model import _linear_genes

    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY)  # default "auto"
    choice = model.gene_linear_choice_
    assert {"all_genes", "hvgs", "n_validation"} <= set(choice)
    chose_hvgs = choice["hvgs"] > choice["all_genes"] + _linear_genes.CHOICE_MARGIN
    assert (model.module.gene_linear_hvgs == _linear_genes.AUTO_LINEAR_HVGS) == chose_hvgs
    assert choice["chosen"] == (_linear_genes.AUTO_LINEAR_HVGS if chose_hvgs else None)  # kept beside the scores
    assert hasattr(model.module, "gene_linear_mask") == chose_hvgs
    for forced in (True, False):  # the model follows whichever way the comparison goes
        monkeypatch.setattr("scrobust_sc.model._model.choose_linear_genes", lambda *a, f=forced, **k: (f, {}))
        forced_model = SCRobust(adata, **TINY)
        assert hasattr(forced_model.module, "gene_linear_mask") == forced
        assert forced_model.init_params_["non_kwargs"]["gene_linear_hvgs"] == (2000 if forced else None)
    unlabelled = small_pbmc.copy()
    SCRobust.setup_anndata(unlabelled)
    assert SCRobust(unlabelled, **TINY).module.gene_linear_hvgs is None  # nothing to choose with


def test_hvg_linear_path_survives_save_and_load(small_pbmc, tmp_path, seeded):
    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY, gene_linear_hvgs=300)
    model.train(max_epochs=1, batch_size=64, **QUIET)
    model.save(tmp_path / "m")
    loaded = SCRobust.load(tmp_path / "m")
    assert loaded.module.gene_linear_hvgs == 300
    torch.testing.assert_close(loaded.module.gene_linear_mask, model.module.gene_linear_mask)
    pd.testing.assert_frame_equal(loaded.predict_proba(adata), model.predict_proba(adata))


def test_unknown_linear_scaling_is_refused(small_pbmc):
    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(ValueError, match="gene_linear_scaling must be one of"):
        SCRobust(adata, **TINY, gene_linear_scaling="zscore")


def test_standardised_linear_path_survives_save_and_load(small_pbmc, tmp_path, seeded):
    adata = small_pbmc.copy()
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY, gene_linear_scaling="standardized")
    model.train(max_epochs=1, batch_size=64, **QUIET)
    model.save(tmp_path / "m")
    loaded = SCRobust.load(tmp_path / "m")
    assert loaded.module.gene_linear_scaling == "standardized"
    torch.testing.assert_close(loaded.module.gene_scale, model.module.gene_scale)
    pd.testing.assert_frame_equal(loaded.predict_proba(adata), model.predict_proba(adata))


def test_rare_types_kept_out_of_validation_are_named_in_the_log(small_pbmc, caplog, seeded):
    adata = small_pbmc.copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:2] = "Tiny type"
    adata.obs["cell_type"] = labels
    SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = SCRobust(adata, **TINY, gene_linear_hvgs=None)
    with caplog.at_level("INFO", logger="scrobust_sc"):
        model.train(max_epochs=1, batch_size=64, **QUIET)
    line = next(r.getMessage() for r in caplog.records if "stay in training only" in r.getMessage())
    assert "Tiny type" in line and "np.int" not in line


def test_encoder_lr_scale_slows_the_encoder_only(small_pbmc, seeded):
    """Fine-tuning a pre-trained encoder gently: its steps shrink, the heads' do not."""
    SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")
    changes = {}
    for scale in (1.0, 1e-4):
        scvi.settings.seed = 0
        model = SCRobust(small_pbmc, **TINY)
        before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        model.train(max_epochs=1, linear_expert=False, plan_kwargs={"encoder_lr_scale": scale}, **QUIET)
        after = model.module.state_dict()
        changes[scale] = {
            part: sum(float((after[k] - before[k]).abs().sum()) for k in before if k.startswith(f"{part}."))
            for part in ("encoder", "classifier")
        }
    assert changes[1e-4]["encoder"] < 0.01 * changes[1.0]["encoder"]
    assert changes[1e-4]["classifier"] > 0.1 * changes[1.0]["classifier"]
    with pytest.raises(ValueError, match="encoder_lr_scale must be positive"):
        model.train(max_epochs=1, plan_kwargs={"encoder_lr_scale": 0}, **QUIET)


def test_default_fine_tuning_epochs_reach_a_step_floor_on_small_references():
    from scrobust_sc.model._model import DEFAULT_FINETUNE_EPOCHS, MIN_FINETUNE_STEPS, finetune_epochs

    assert finetune_epochs(2800, 64, drop_last=True) == DEFAULT_FINETUNE_EPOCHS  # 43 steps an epoch: 860 steps
    small = finetune_epochs(280, 64, drop_last=True)  # 4 steps an epoch
    assert small * 4 >= MIN_FINETUNE_STEPS > (small - 1) * 4
    assert finetune_epochs(10, 10, drop_last=False) == MIN_FINETUNE_STEPS  # one step an epoch


def test_train_without_max_epochs_records_the_derived_epochs(small_pbmc, seeded, monkeypatch):
    import scrobust_sc.model._model as model_module

    monkeypatch.setattr(model_module, "MIN_FINETUNE_STEPS", 6)  # 2 steps an epoch below: 3 epochs
    SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")
    model = SCRobust(small_pbmc, **TINY)
    monkeypatch.setattr(model_module, "DEFAULT_FINETUNE_EPOCHS", 1)
    model.train(batch_size=80, n_genes=32, **QUIET)  # 180 training cells: 2 full batches an epoch
    assert model.train_params_["train"]["max_epochs"] == 3
    assert len(model.history["f1_macro_validation"]) == 3


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_training_shows_no_lightning_pytree_deprecation(stage, seeded):
    """Lightning's use of torch's deprecated ``LeafSpec`` is its business, not the user's: not shown."""
    adata = demo_subset(60, 200)
    scrobust.SCRobust.setup_anndata(adata, labels_key="cell_type")
    model = scrobust.SCRobust(adata, **TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters_before = list(warnings.filters)
        if stage == "pretrain":
            model.pretrain(max_steps=2, batch_size=16, **QUIET)
        else:
            model.train(max_epochs=1, batch_size=16, n_genes=32, **QUIET)
        filters_after = list(warnings.filters)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert filters_after == filters_before  # the caller's warning filters are left as they were


def test_knn_monitor_logs_accuracy_and_trains_as_without(small_pbmc):
    """With labels registered, pre-training logs kNN accuracy a few times; the weights do not notice."""
    runs = {}
    for monitor in (None, False):
        scvi.settings.seed = 0
        a = small_pbmc.copy()
        SCRobust.setup_anndata(a, labels_key="cell_type")
        model = SCRobust(a, **TINY)
        model.pretrain(max_epochs=10, batch_size=32, knn_monitor=monitor, **QUIET)
        runs[monitor] = model
    knn = runs[None].history[scrobust.train.KNN_METRIC].iloc[:, 0].astype(float).dropna()
    assert 2 <= len(knn) <= scrobust.train.KNN_EVALUATIONS + 1, knn
    assert knn.index[-1] == 9  # the last epoch is always evaluated
    assert ((knn >= 0) & (knn <= 1)).all()
    assert scrobust.train.KNN_METRIC not in runs[False].history
    # the same random draws, so the same run up to rounding (BLAS results may differ in the last bit
    # with memory alignment); other views would move the losses by ~1e-2
    losses = [runs[m].history["train_loss"].to_numpy(dtype=float) for m in (None, False)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    np.testing.assert_allclose(
        runs[None].get_latent_representation(), runs[False].get_latent_representation(), rtol=1e-4, atol=1e-5
    )


def test_knn_monitor_records_the_step_of_each_evaluation(small_pbmc, seeded):
    """200 cells, 180 in training, batches of 32: 5 steps an epoch, 3 epochs for 15 steps."""
    SCRobust.setup_anndata(small_pbmc, labels_key="cell_type")
    model = SCRobust(small_pbmc, **TINY)
    labels = small_pbmc.obs["cell_type"].to_numpy()
    monitor = scrobust.train.KNNMonitor(model.get_latent_representation, labels, evaluations=2)
    model.pretrain(max_steps=15, batch_size=32, knn_monitor=False, callbacks=[monitor], **QUIET)
    assert monitor.evaluated == [(2, 10), (3, 15)]
    knn = model.history[scrobust.train.KNN_METRIC].iloc[:, 0].astype(float).dropna()
    assert list(knn.index) == [1, 2]
    with pytest.raises(ValueError, match="evaluations must be at least 1"):
        scrobust.train.KNNMonitor(model.get_latent_representation, labels, evaluations=0)


@pytest.mark.parametrize("rank", [0, 1])
def test_knn_monitor_evaluates_on_the_first_process_only(rank):
    """Under data parallelism every process would embed the same cells for the same value: rank 0 does it."""
    calls, logged = [], []
    labels = np.repeat(["a", "b"], 10)
    z = np.eye(2)[(labels == "b").astype(int)]
    monitor = scrobust.train.KNNMonitor(lambda: calls.append(1) or z, labels, evaluations=1)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=1, max_steps=-1, global_step=5, global_rank=rank)
    module = SimpleNamespace(training=True, train=lambda mode: None, log=lambda *a, **k: logged.append((a, k)))
    monitor.on_train_epoch_end(trainer, module)
    assert len(calls) == len(logged) == len(monitor.evaluated) == (1 if rank == 0 else 0)
    if rank == 0:
        (name, value), options = logged[0]
        assert (name, value) == (scrobust.train.KNN_METRIC, 1.0)
        assert options["rank_zero_only"]  # no other process logs it, so nothing may wait for them


def test_knn_monitor_needs_labels(small_pbmc, seeded):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    with pytest.raises(ValueError, match="labels_key"):
        model.pretrain(max_steps=2, knn_monitor=True, **QUIET)
    model.pretrain(max_steps=2, **QUIET)  # None: off without labels
    assert scrobust.train.KNN_METRIC not in model.history


class _SplitterSeen(Exception):
    pass


@pytest.mark.parametrize(("strategy", "sharded"), [("ddp_find_unused_parameters_true", True), (None, False)])
def test_data_parallel_training_loads_a_share_of_each_batch_per_process(small_pbmc, monkeypatch, strategy, sharded):
    """Under DDP each process needs scvi-tools' distributed sampler: without it Lightning's own
    sampler handed the encoder batches of batches, and pre-training stopped at its first step."""
    seen = {}

    def splitter(*args, **kwargs):
        seen.update(kwargs)
        raise _SplitterSeen

    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    monkeypatch.setattr(model, "_data_splitter_cls", splitter)
    trainer = {} if strategy is None else {"strategy": strategy}
    with pytest.raises(_SplitterSeen):
        model.pretrain(max_steps=2, **trainer, **QUIET)
    assert seen["distributed_sampler"] is sharded
    with pytest.raises(_SplitterSeen):  # the caller's datasplitter_kwargs still win
        model.pretrain(max_steps=2, datasplitter_kwargs={"distributed_sampler": False}, **trainer, **QUIET)
    assert seen["distributed_sampler"] is False
