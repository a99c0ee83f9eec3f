"""Model files: old versions keep loading; bad, corrupted or malicious files are refused."""

import json
import pickle
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from scrobust_sc import SCRobust

from .conftest import TINY

FIXTURE = Path(__file__).parent / "data"


def test_a_model_saved_by_version_0_1_0_still_loads():
    model = SCRobust.load(FIXTURE / "model_v0.1.0")
    cells = ad.read_h5ad(FIXTURE / "model_v0.1.0_cells.h5ad")
    expected = np.load(FIXTURE / "model_v0.1.0_expected_embedding.npy")
    np.testing.assert_allclose(model.get_latent_representation(cells), expected, rtol=1e-5, atol=1e-6)
    assert len(model.predict(cells)) == cells.n_obs
    assert model.module.gene_linear_scaling == "none"  # its linear path was trained on log1p values


@pytest.fixture
def saved(tmp_path):
    target = tmp_path / "m"
    shutil.copytree(FIXTURE / "model_v0.1.0", target)
    return target


def test_a_crafted_pickle_is_never_executed(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (saved / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    meta = json.loads((saved / "model.json").read_text())
    meta.pop("weights_sha256")
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        SCRobust.load(saved)
    assert not marker.exists()


def test_truncated_weights_are_refused(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        SCRobust.load(saved)


def test_corrupted_json_is_refused(saved):
    (saved / "model.json").write_text('{"format": "scrobust-sc", "regis')
    with pytest.raises(ValueError, match="not valid JSON"):
        SCRobust.load(saved)


def test_missing_weights_say_the_save_was_interrupted(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        SCRobust.load(saved)


def test_a_newer_format_asks_for_an_upgrade(saved):
    meta = json.loads((saved / "model.json").read_text())
    meta["format_version"] = 99
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="upgrade scrobust-sc"):
        SCRobust.load(saved)


def test_an_interrupted_save_keeps_the_previous_model(small_pbmc, saved, monkeypatch):
    from scrobust_sc.model import _io

    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(saved, overwrite=True)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # no temp file left, nothing replaced
    SCRobust.load(saved)


def test_a_model_saved_before_the_energy_novelty_keeps_the_distance_rule():
    model = SCRobust.load(FIXTURE / "model_v0.1.0")
    cells = ad.read_h5ad(FIXTURE / "model_v0.1.0_cells.h5ad")
    assert model.module.reference_energy.numel() == 0
    novelty = model.predict_novelty(cells)
    assert np.isfinite(novelty).all()
    assert np.array_equal(model.predict(cells, novelty_threshold=1.0) == "Unknown", novelty > 1.0)


def test_temporary_files_left_by_a_killed_save_are_removed_by_the_next_save(small_pbmc, tmp_path):
    SCRobust.setup_anndata(small_pbmc)
    model = SCRobust(small_pbmc, **TINY)
    folder = tmp_path / "model"
    folder.mkdir()
    for name in (".model.safetensors.abc123.tmp", ".model.json.def456.tmp"):
        (folder / name).write_bytes(b"half a file")
    model.save(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]


def test_an_edited_model_json_is_refused_with_the_reason(saved):
    """Valid JSON that no longer matches the model (found by the stop-35 review): refused at load, named."""
    import json

    meta = json.loads((saved / "model.json").read_text())
    shorter = {**meta, "gene_names": meta["gene_names"][:-1]}
    (saved / "model.json").write_text(json.dumps(shorter))
    with pytest.raises(ValueError, match=r"lists \d+ genes, but its registry was set up on \d+"):
        SCRobust.load(saved)
    (saved / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "registry"}))
    with pytest.raises(ValueError, match="lacks 'registry'"):
        SCRobust.load(saved)
