"""The package on a CUDA GPU. Skipped without one (CI has none); ``benchmarks/gpu_check.sh`` runs it on a GPU machine.

Training, prediction, embeddings, attention markers and model files on the GPU; learning
and saved models are checked against the CPU, bf16 predictions against fp32 ones.
"""

import numpy as np
import pytest
import scvi
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

import scrobust_sc as scrobust

from .conftest import QUIET, TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def split():
    """The 600 demo PBMCs, 70% to train on and 30% to predict, stratified by type."""
    adata = scrobust.data.pbmc_demo()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.3, stratify=labels, random_state=0)
    return adata[np.sort(train)].copy(), adata[np.sort(test)].copy()


def _fit(train, accelerator: str, seed: int, **train_kwargs):
    scvi.settings.seed = seed
    device = {"accelerator": accelerator, **QUIET}
    return scrobust.tl.fit_annotator(
        train,
        "cell_type",
        model_kwargs=TINY,
        pretrain_kwargs={"max_steps": 60, **device},
        train_kwargs={"max_epochs": 10, **device, **train_kwargs},
    )


def _macro_f1(model, test) -> float:
    return f1_score(test.obs["cell_type"].astype(str), model.predict(test), average="macro")


def _majority_f1(test) -> float:
    truth = test.obs["cell_type"].astype(str)
    return f1_score(truth, np.full(len(truth), truth.value_counts().index[0]), average="macro")


def test_embeddings_markers_and_novelty_are_computed_on_the_gpu(split):
    train, test = split
    model = _fit(train, "gpu", seed=0)
    latent = model.get_latent_representation(test)
    assert latent.shape == (test.n_obs, TINY["d_model"]) and np.isfinite(latent).all()
    novelty = model.predict_novelty(test)
    assert novelty.shape == (test.n_obs,) and np.isfinite(novelty).all()
    test = test.copy()  # the split is shared by the module's tests; markers go to its uns
    scrobust.tl.marker_genes(test, model, groupby="cell_type", n_genes=5)
    names = test.uns["scrobust_markers"]["names"]
    assert len(names) == 5 and set(names.dtype.names) == set(test.obs["cell_type"].astype(str))


def test_a_model_trained_on_the_gpu_predicts_the_same_after_loading_on_the_cpu(split, tmp_path):
    train, test = split
    model = _fit(train, "gpu", seed=0)
    on_gpu = model.predict(test, soft=True)
    latent_gpu = model.get_latent_representation(test)
    model.save(tmp_path / "model")
    loaded = scrobust.SCRobust.load(tmp_path / "model")
    assert loaded.device.type == "cpu"
    np.testing.assert_allclose(loaded.predict(test, soft=True).to_numpy(), on_gpu.to_numpy(), atol=1e-3)
    np.testing.assert_allclose(loaded.get_latent_representation(test), latent_gpu, atol=1e-3, rtol=1e-3)
    back = scrobust.SCRobust.load(tmp_path / "model", accelerator="gpu")
    assert back.device.type == "cuda"
    np.testing.assert_allclose(back.predict(test, soft=True).to_numpy(), on_gpu.to_numpy(), atol=1e-5)


def test_bf16_mixed_precision_on_the_gpu_agrees_with_fp32_inference(split):
    train, test = split
    model = _fit(train, "gpu", seed=0, precision="bf16-mixed")
    fp32 = model.predict(test)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model.predict(test)
    # the same weights read in bf16: types change only where two are nearly tied
    assert np.mean(bf16 == fp32) >= 0.98
    assert _macro_f1(model, test) > _majority_f1(test) + 0.3


def test_a_model_trained_on_the_gpu_learns_as_well_as_on_the_cpu(split):
    train, test = split
    gpu = _fit(train, "gpu", seed=0)
    assert gpu.device.type == "cuda"
    cpu = [_fit(train, "cpu", seed=s) for s in (0, 1)]
    f1_gpu, f1_cpu = _macro_f1(gpu, test), [_macro_f1(m, test) for m in cpu]
    # the GPU draws other random numbers: another seed, so the CPU's seed-to-seed spread is the bar
    spread = max(0.03, abs(f1_cpu[0] - f1_cpu[1]))
    assert f1_gpu > _majority_f1(test) + 0.3
    assert f1_gpu >= min(f1_cpu) - spread, (f1_gpu, f1_cpu)
