"""Inference on AnnData read from disk (backed="r") streams chunks of cells."""

import anndata as ad
import numpy as np

import scrobust_sc.model._model as model_module

from .conftest import demo_subset, tiny_model


def test_backed_inference_reads_bounded_chunks_in_the_requested_order(tmp_path, monkeypatch):
    cells = demo_subset(120, 300)
    model = tiny_model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    seen = []
    align = model_module.align_to_genes

    def recording_align(adata, *args, **kwargs):
        seen.append(adata.n_obs)
        return align(adata, *args, **kwargs)

    monkeypatch.setattr(model_module, "BACKED_CHUNK_CELLS", 50)
    monkeypatch.setattr(model_module, "align_to_genes", recording_align)
    expected = model.get_latent_representation(cells)
    seen.clear()
    # other chunks make other mini-batches (other padding): float rounding only
    np.testing.assert_allclose(model.get_latent_representation(backed), expected, rtol=1e-5, atol=1e-6)
    assert seen == [50, 50, 20]  # never the whole matrix at once
    order = np.array([119, 3, 3, 60, 0, 77])
    z = model.get_latent_representation(backed, indices=order)
    np.testing.assert_allclose(z, expected[order], rtol=1e-5, atol=1e-6)


def test_backed_prediction_matches_in_memory(tmp_path, monkeypatch, seeded):
    cells = demo_subset(120, 300)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    from scrobust_sc import SCRobust

    from .conftest import QUIET, TINY

    registered = cells.copy()
    SCRobust.setup_anndata(registered, labels_key="cell_type")
    model = SCRobust(registered, **TINY)
    model.train(max_epochs=1, batch_size=32, n_genes=64, **QUIET)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    monkeypatch.setattr(model_module, "BACKED_CHUNK_CELLS", 32)
    expected = model.predict_proba(cells)
    got = model.predict_proba(backed)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-6)
    assert got.index.equals(expected.index)
    # novelty of a training cell includes its distance to itself (~0), where sqrt magnifies rounding
    np.testing.assert_allclose(model.predict_novelty(backed), model.predict_novelty(cells), atol=2e-3)


def test_bf16_mixed_precision_trains_and_infers_close_to_fp32(seeded, one_thread):
    import torch

    from scrobust_sc import SCRobust

    from .conftest import QUIET, TINY

    cells = demo_subset(120, 300)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    SCRobust.setup_anndata(cells, labels_key="cell_type")
    model = SCRobust(cells, **TINY)
    model.pretrain(max_steps=3, batch_size=32, precision="bf16-mixed", **QUIET)
    model.train(max_epochs=1, batch_size=32, n_genes=64, precision="bf16-mixed", **QUIET)
    assert all(p.dtype == torch.float32 for p in model.module.parameters())  # master weights stay fp32
    assert np.isfinite(model.history["classification_loss_train"].to_numpy(dtype=float)).all()
    fp32 = model.get_latent_representation()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.get_latent_representation()
    assert bf16.dtype == np.float32
    relative = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert np.median(relative) < 0.02  # bf16 keeps ~3 significant digits


def test_compiled_encoder_gives_the_same_outputs_and_saves_the_same_weights(tmp_path, seeded, one_thread):
    import torch

    from scrobust_sc import SCRobust

    from .conftest import QUIET, TINY

    cells = demo_subset(80, 200)
    cells.obs["cell_type"] = cells.obs["cell_type"].astype(str)
    SCRobust.setup_anndata(cells, labels_key="cell_type")
    model = SCRobust(cells, **TINY)
    before = model.get_latent_representation()
    keys = set(model.module.state_dict())
    torch._dynamo.reset()
    model.compile_encoder(backend="eager")  # graph capture without a C++ toolchain
    assert model.module.encoder._compiled_call_impl is not None
    np.testing.assert_allclose(model.get_latent_representation(), before, rtol=1e-5, atol=1e-6)
    model.train(max_epochs=1, batch_size=32, n_genes=64, **QUIET)
    assert set(model.module.state_dict()) == keys
    model.save(tmp_path / "m")
    loaded = SCRobust.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.get_latent_representation(cells), model.get_latent_representation(), rtol=1e-5, atol=1e-6
    )
    torch._dynamo.reset()


def test_a_view_of_a_backed_file_embeds_like_the_same_cells_in_memory(tmp_path, monkeypatch, seeded):
    # anndata cannot index a view of a backed AnnData again; chunked reading must not try to
    cells = demo_subset(120, 300)
    model = tiny_model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    monkeypatch.setattr(model_module, "BACKED_CHUNK_CELLS", 16)
    rows = np.sort(np.random.default_rng(0).choice(cells.n_obs, 50, replace=False))
    genes = cells.var_names[::-1][:250]  # a gene subset, in another order
    pairs = [(backed[:70], cells[:70]), (backed[rows], cells[rows]), (backed[rows, genes], cells[rows, genes])]
    for view, in_memory in pairs:
        expected = model.get_latent_representation(in_memory.copy())
        np.testing.assert_allclose(model.get_latent_representation(view), expected, rtol=1e-5, atol=1e-6)


def test_backed_chunks_are_not_kept_alive_after_use(tmp_path, monkeypatch):
    # scvi-tools registers every AnnData it validates; chunks left registered grow memory with the cells
    cells = demo_subset(120, 300)
    model = tiny_model(cells)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    monkeypatch.setattr(model_module, "BACKED_CHUNK_CELLS", 16)
    before = sum(len(v) for v in model._per_instance_manager_store.values())
    model.get_latent_representation(backed)
    model.get_latent_representation(backed[:50])
    assert sum(len(v) for v in model._per_instance_manager_store.values()) == before
