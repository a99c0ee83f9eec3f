"""Resumable training: checkpoint every epoch, resume after Ctrl+C or a killed process."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

from scrobust_sc import SCRobust
from scrobust_sc.train import CHECKPOINT_FILE, SafeCheckpointIO, read_checkpoint

from .conftest import QUIET, TINY, demo_subset

# keep_best=True: the checkpoints must carry the best epoch so far
FINE_TUNE = {"max_epochs": 4, "n_genes": 32, "batch_size": 16, "keep_best": True, **QUIET}
PRETRAIN = {"max_epochs": 3, "batch_size": 16, **QUIET}


class CtrlCAt(Callback):
    """Raise ``KeyboardInterrupt`` when epoch ``epoch`` (0-based) starts."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def cells():
    return demo_subset(80, 200)


def _fresh(cells, labels: bool = True) -> SCRobust:
    scvi.settings.seed = 0
    a = cells.copy()
    SCRobust.setup_anndata(a, labels_key="cell_type" if labels else None)
    return SCRobust(a, **TINY)


def _assert_same_weights(a: SCRobust, b: SCRobust):
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _assert_same_history(a: SCRobust, b: SCRobust):
    assert set(a.history) == set(b.history)
    for key in a.history:
        np.testing.assert_array_equal(a.history[key].to_numpy(), b.history[key].to_numpy(), err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(cells):
    model = _fresh(cells)
    model.train(**FINE_TUNE)
    return model


def test_interrupted_fine_tuning_resumes_to_the_uninterrupted_result(cells, uninterrupted, tmp_path, caplog):
    interrupted = _fresh(cells)
    with caplog.at_level("WARNING", logger="scrobust_sc"):
        interrupted.train(checkpoint_dir=tmp_path, callbacks=[CtrlCAt(2)], **FINE_TUNE)
    assert "during epoch 3: the model keeps the weights of the best validation epoch" in caplog.text
    best = read_checkpoint(tmp_path / CHECKPOINT_FILE)["scrobust_best"]
    for key, value in interrupted.module.state_dict().items():  # Ctrl+C kept the best epoch so far
        if not key.startswith(("reference_", "expert_")):  # fitted after training, as after Ctrl+C
            assert torch.equal(value, best["state"][key]), key

    resumed = _fresh(cells)  # a new model object, as in a new process
    torch.manual_seed(12345)  # other random states: the checkpoint's must be restored
    np.random.seed(6789)
    resumed.train(checkpoint_dir=tmp_path, resume=True, **FINE_TUNE)
    _assert_same_weights(resumed, uninterrupted)
    _assert_same_history(resumed, uninterrupted)
    assert resumed.train_params_ == uninterrupted.train_params_
    np.testing.assert_array_equal(resumed.predict_proba().to_numpy(), uninterrupted.predict_proba().to_numpy())


def test_resuming_in_the_same_session_after_ctrl_c(cells, uninterrupted, tmp_path):
    model = _fresh(cells)
    model.train(checkpoint_dir=tmp_path, callbacks=[CtrlCAt(1)], **FINE_TUNE)
    model.train(checkpoint_dir=tmp_path, resume=True, **FINE_TUNE)  # the history is not counted twice
    _assert_same_weights(model, uninterrupted)
    _assert_same_history(model, uninterrupted)


def test_interrupted_pretraining_resumes_to_the_uninterrupted_result(cells, tmp_path):
    reference = _fresh(cells, labels=False)
    reference.pretrain(**PRETRAIN)
    interrupted = _fresh(cells, labels=False)
    interrupted.pretrain(checkpoint_dir=tmp_path, callbacks=[CtrlCAt(2)], **PRETRAIN)
    resumed = _fresh(cells, labels=False)
    torch.manual_seed(1)
    resumed.pretrain(checkpoint_dir=tmp_path, resume=True, **PRETRAIN)
    _assert_same_weights(resumed, reference)
    _assert_same_history(resumed, reference)
    np.testing.assert_array_equal(resumed.get_latent_representation(), reference.get_latent_representation())


def test_rerunning_a_finished_pretraining_fine_tunes_to_the_uninterrupted_result(cells, tmp_path):
    # a script re-run after its pre-training finished: resume=True skips the pre-training,
    # and the fine-tuning that follows must draw the same random numbers as in the first run
    first = _fresh(cells)
    first.pretrain(checkpoint_dir=tmp_path, resume=True, **PRETRAIN)
    first.train(**FINE_TUNE)
    rerun = _fresh(cells)
    torch.manual_seed(1)
    rerun.pretrain(checkpoint_dir=tmp_path, resume=True, **PRETRAIN)
    rerun.train(**FINE_TUNE)
    _assert_same_weights(rerun, first)
    np.testing.assert_array_equal(rerun.predict_proba().to_numpy(), first.predict_proba().to_numpy())


KILLED_RUN = """
import os, signal, sys
import scvi, torch
from lightning.pytorch.callbacks import Callback
sys.path.insert(0, {tests!r})
from conftest import TINY, QUIET, demo_subset
from scrobust_sc import SCRobust

class Kill(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    torch.set_num_threads(2)
    scvi.settings.seed = 0
    a = demo_subset(80, 200)
    SCRobust.setup_anndata(a, labels_key="cell_type")
    model = SCRobust(a, **TINY)
    model.train(
        max_epochs=4, n_genes=32, batch_size=16, keep_best=True, checkpoint_dir={ckpt!r}, callbacks=[Kill()], **QUIET
    )
"""


def test_a_killed_process_resumes_to_the_uninterrupted_result(cells, uninterrupted, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(tests=str(Path(__file__).parent), ckpt=str(tmp_path / "ckpt"))))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # SIGKILL: no clean-up ran
    assert read_checkpoint(tmp_path / "ckpt" / CHECKPOINT_FILE)["epoch"] == 1  # epochs 0 and 1 were saved
    resumed = _fresh(cells)
    resumed.train(checkpoint_dir=tmp_path / "ckpt", resume=True, **FINE_TUNE)
    _assert_same_weights(resumed, uninterrupted)
    np.testing.assert_array_equal(resumed.predict_proba().to_numpy(), uninterrupted.predict_proba().to_numpy())


@pytest.fixture(scope="module")
def stopped(cells, tmp_path_factory):
    """A checkpoint folder of a fine-tuning run stopped by Ctrl+C after epoch 1."""
    path = tmp_path_factory.mktemp("stopped")
    _fresh(cells).train(checkpoint_dir=path, callbacks=[CtrlCAt(1)], **FINE_TUNE)
    return path


def test_resuming_with_other_settings_is_refused(cells, stopped):
    with pytest.raises(ValueError, match="other settings \\(lr: 0.001 -> 0.01\\)"):
        _fresh(cells).train(checkpoint_dir=stopped, resume=True, **{**FINE_TUNE, "lr": 0.01})


def test_resuming_another_stage_is_refused(cells, stopped):
    with pytest.raises(ValueError, match="is a 'train' checkpoint; it cannot resume 'pretrain'"):
        _fresh(cells).pretrain(checkpoint_dir=stopped, resume=True, **PRETRAIN)


def test_resuming_on_another_data_split_is_refused(cells, stopped):
    model = _fresh(cells)
    scvi.settings.seed = 1  # another stratified validation split
    with pytest.raises(ValueError, match="another data split.*same `scvi.settings.seed`"):
        model.train(checkpoint_dir=stopped, resume=True, **FINE_TUNE)


def test_resume_without_a_checkpoint_starts_from_the_beginning(cells, tmp_path, caplog):
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir="):
        _fresh(cells).train(resume=True, **FINE_TUNE)
    model = _fresh(cells)
    with caplog.at_level("INFO", logger="scrobust_sc"):
        model.train(checkpoint_dir=tmp_path / "new", resume=True, **{**FINE_TUNE, "max_epochs": 1})
    assert "training starts from the beginning" in caplog.text
    assert read_checkpoint(tmp_path / "new" / CHECKPOINT_FILE)["epoch"] == 0


def test_a_crafted_checkpoint_is_never_unpickled(cells, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / CHECKPOINT_FILE).write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(ValueError, match="cannot be read as a training checkpoint"):
        _fresh(cells).train(checkpoint_dir=tmp_path, resume=True, **FINE_TUNE)
    torch.save({"state_dict": {}, "payload": Exploit()}, tmp_path / CHECKPOINT_FILE)  # a torch file with an object
    with pytest.raises(ValueError, match="holding objects other than tensors"):
        read_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_refused(cells, stopped, tmp_path):
    data = (stopped / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupted"):
        _fresh(cells).train(checkpoint_dir=tmp_path, resume=True, **FINE_TUNE)


def test_an_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    target = tmp_path / CHECKPOINT_FILE
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, target)
    before = target.read_bytes()

    def killed_mid_write(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary file left
    assert io.load_checkpoint(target)["epoch"] == 1


def test_interrupted_pretraining_with_a_step_budget_resumes_to_the_uninterrupted_result(cells, tmp_path):
    """``max_steps`` (the docs' own example), not only ``max_epochs``: found by the stop-35 review."""
    steps = {"max_steps": 12, "batch_size": 16, **QUIET}  # 4 steps an epoch: 3 epochs
    reference = _fresh(cells, labels=False)
    reference.pretrain(**steps)
    interrupted = _fresh(cells, labels=False)
    interrupted.pretrain(checkpoint_dir=tmp_path, callbacks=[CtrlCAt(2)], **steps)
    resumed = _fresh(cells, labels=False)
    resumed.pretrain(checkpoint_dir=tmp_path, resume=True, **steps)
    _assert_same_weights(resumed, reference)
    _assert_same_history(resumed, reference)


def test_resuming_with_another_model_is_refused(cells, stopped):
    scvi.settings.seed = 0
    a = cells.copy()
    SCRobust.setup_anndata(a, labels_key="cell_type")
    other = SCRobust(a, **{**TINY, "d_model": 16})
    with pytest.raises(ValueError, match=r"other settings \(model.d_model: 32 -> 16\)"):
        other.train(checkpoint_dir=stopped, resume=True, **FINE_TUNE)


def test_a_temporary_file_left_by_a_kill_is_removed_by_the_next_write(tmp_path):
    """A real SIGKILL mid-write cannot clean up after itself: the next write into the folder does."""
    io = SafeCheckpointIO()
    target = tmp_path / CHECKPOINT_FILE
    stale = tmp_path / f".{CHECKPOINT_FILE}.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"  # not ours: kept
    other.write_text("mine")
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_FILE, "notes.tmp"])
