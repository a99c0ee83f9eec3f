"""Resumable training: a checkpoint written atomically after every epoch, read without unpickling code.

The checkpoint is Lightning's own (weights, optimiser and scheduler states, loop counters,
the plans' and callbacks' states) plus what a bit-identical resume also needs: the torch,
numpy and Python random states, the history so far, the data split and the settings of
the run. It is written with ``torch.save`` through a temporary file and an atomic rename,
and read with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers: a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from scvi.train._trainrunner import _safe_load_logger_history

from scrobust_sc._files import staged_file

logger = logging.getLogger("scrobust_sc")

#: Name of the resumable checkpoint inside ``checkpoint_dir``.
CHECKPOINT_FILE = "last.ckpt"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: atomic writes, and loads that never unpickle objects."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to a temporary file next to ``path``, then rename it over ``path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_file(target, lambda tmp: torch.save(checkpoint, tmp)), target)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Read a checkpoint with ``torch.load(weights_only=True)`` whatever the caller asks."""
        return read_checkpoint(path, map_location=map_location)


def read_checkpoint(path, *, map_location: Any | None = "cpu") -> dict:
    """Load a training checkpoint safely: tensors and plain containers only, never code.

    Raises ``ValueError`` naming the file when it is truncated, corrupted or holds objects
    (a pickle that would run code).

    Examples
    --------
    >>> state = read_checkpoint("checkpoints/last.ckpt")  # doctest: +SKIP
    >>> state["epoch"]  # doctest: +SKIP
    4
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise ValueError(
            f"{path} cannot be read as a training checkpoint (truncated, corrupted, or holding objects other "
            f"than tensors, which are never unpickled): {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a scrobust-sc training checkpoint.")
    return checkpoint


# ---------------------------------------------------------------- random states
def capture_rng() -> dict:
    """The torch (CPU and CUDA), numpy and Python random states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the random states saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- history
def history_to_json(history: dict | None) -> dict:
    """``{metric: {"index": [...], "values": [...]}}`` of a model's history (one-column frames)."""
    if not isinstance(history, dict):
        return {}
    return {
        k: {"index": [int(i) for i in v.index], "values": [float(x) for x in v.iloc[:, 0]]}
        for k, v in history.items()
        if isinstance(v, pd.DataFrame) and v.shape[1] == 1
    }


def history_from_json(data: dict) -> dict[str, pd.DataFrame]:
    """Inverse of :func:`history_to_json`."""
    return {k: pd.DataFrame({k: v["values"]}, index=pd.Index(v["index"], name="epoch")) for k, v in data.items()}


def append_history(history: dict | None, new: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Append a run's metrics after the rows already in ``history``; new metrics are added.

    Examples
    --------
    >>> import pandas as pd
    >>> a = {"loss": pd.DataFrame({"loss": [3.0, 2.0]})}
    >>> append_history(a, {"loss": pd.DataFrame({"loss": [1.0]})})["loss"].index.tolist()
    [0, 1, 2]
    """
    history = dict(history) if isinstance(history, dict) else {}
    for key, frame in new.items():
        frame = frame.copy()
        if key in history:
            start = len(history[key])
            frame.index = pd.Index(np.arange(start, start + len(frame)), name=history[key].index.name)
            history[key] = pd.concat([history[key], frame])
        else:
            history[key] = frame
    return history


def _epoch_history(trainer) -> dict:
    """The run's per-epoch metrics up to the current epoch, as JSON-friendly lists.

    Called at the end of a training epoch, when the logger holds the validation metrics of
    this epoch but not yet the training metrics, which are read from ``callback_metrics``.
    """
    logged = history_to_json(_safe_load_logger_history(trainer) or {})
    epoch = trainer.current_epoch
    for key, value in trainer.callback_metrics.items():
        entry = logged.setdefault(key, {"index": [], "values": []})
        if epoch not in entry["index"]:
            entry["index"].append(epoch)
            entry["values"].append(float(value))
    return logged


# ---------------------------------------------------------------- the callback
class EpochCheckpoint(Callback):
    """Write a resumable checkpoint into ``dirpath`` at the end of every training epoch.

    Parameters
    ----------
    dirpath
        Folder of the checkpoint (``last.ckpt``).
    stage
        ``"pretrain"`` or ``"train"``; a checkpoint resumes only the same stage.
    run_settings
        The settings of the run (JSON-serialisable); resuming with other settings is refused.
    history_before
        The model's history before this run (:func:`history_to_json`), restored with the
        checkpoint.
    """

    def __init__(self, dirpath, *, stage: str, run_settings: dict, history_before: dict | None):
        self.path = Path(dirpath) / CHECKPOINT_FILE
        self.stage = stage
        self.run_settings = json.loads(json.dumps(run_settings, default=str, sort_keys=True))
        self.history_before = history_before or {}
        self._epoch_history: dict = {}
        self._restored_split: dict | None = None
        self._split: dict = {}
        self._rng_at_resume: dict | None = None

    @property
    def state_key(self) -> str:
        return "scrobust_epoch_checkpoint"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._rng_at_resume = None
        self._epoch_history = _epoch_history(trainer)
        trainer.save_checkpoint(self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        mark_epoch_complete(checkpoint.get("loops", {}).get("fit_loop", {}))

    def state_dict(self) -> dict:
        return {
            "stage": self.stage,
            "run_settings": json.dumps(self.run_settings, sort_keys=True),
            "history_before": json.dumps(self.history_before),
            "history": json.dumps(self._epoch_history),
            "split": self._split,
            "rng": capture_rng(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks just before the fit loop starts: nothing random happens in
        # between, as after the epoch end that wrote the checkpoint in the interrupted run
        restore_rng(state_dict["rng"])
        self._rng_at_resume = state_dict["rng"]
        self._restored_split = state_dict.get("split")

    def setup(self, trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        self._split = {}
        for name in ("train_idx", "val_idx"):
            value = getattr(datamodule, name, None)
            self._split[name] = torch.as_tensor(np.asarray([] if value is None else value, dtype=np.int64))

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restored_split is None:
            return
        for name, saved in self._restored_split.items():
            if not torch.equal(saved, self._split[name]):
                raise ValueError(
                    f"The checkpoint in {self.path.parent} was trained on another data split ({name} differs): "
                    "resume with the same AnnData and the same `scvi.settings.seed`."
                )

    def on_fit_end(self, trainer, pl_module) -> None:
        # Resuming a run that had already finished trains no epoch, yet Lightning still sets up
        # the data loaders, and each opening draws from the torch random state. Put back the state
        # the finished run ended with, so that what follows (fine-tuning after pre-training)
        # draws the same numbers as after the uninterrupted run.
        if self._rng_at_resume is not None:
            restore_rng(self._rng_at_resume)


def mark_epoch_complete(fit_loop: dict) -> None:
    """Make a fit loop's saved state read as "between two epochs", in place.

    The checkpoint is written inside an epoch's end: its batches and validation are done,
    and Lightning counts the epoch complete (and starts the next epoch's counters) only
    after that hook. A run with a step budget (``max_steps``) is always resumed as
    "restarting", and from the state as saved Lightning replayed the epoch's end, counted
    the epoch twice, and found the next epoch's batches already done: it stopped an epoch
    early. Resuming from the state this function leaves starts the next epoch afresh, as a
    run with an epoch budget does.

    Examples
    --------
    >>> loop = {
    ...     "epoch_progress": {"current": {"ready": 2, "started": 2, "processed": 2, "completed": 1}},
    ...     "epoch_loop.batch_progress": {"current": {"ready": 4, "completed": 4}, "is_last_batch": True},
    ... }
    >>> mark_epoch_complete(loop)
    >>> loop["epoch_progress"]["current"]["completed"], loop["epoch_loop.batch_progress"]
    (2, {'current': {'ready': 0, 'completed': 0}, 'is_last_batch': False})
    """
    progress = fit_loop.get("epoch_progress", {})
    trackers = [t for t in (progress.get("total"), progress.get("current")) if t is not None]
    if not trackers or any(t.get("completed") != t.get("processed", 0) - 1 for t in trackers):
        return  # not saved inside an epoch's end
    for tracker in trackers:
        tracker["completed"] = tracker["processed"]
    for key, state in fit_loop.items():  # the finished epoch's counters restart at the next epoch
        if key.startswith("epoch_loop.") and isinstance(state, dict):
            _zero_current(state)


def _zero_current(state: dict) -> None:
    """Zero every ``current`` counter below ``state`` (totals stay) and clear ``is_last_batch``."""
    for key, value in state.items():
        if key == "current" and isinstance(value, dict):
            for name in value:
                value[name] = 0
        elif key == "is_last_batch":
            state[key] = False
        elif isinstance(value, dict):
            _zero_current(value)


def describe_mismatch(saved: dict, current: dict) -> list[str]:
    """``"key: saved -> current"`` for each setting that differs.

    Examples
    --------
    >>> describe_mismatch({"lr": 0.001, "batch_size": 32}, {"lr": 0.01, "batch_size": 32})
    ['lr: 0.001 -> 0.01']
    """
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


def prepare_checkpointing(
    model, checkpoint_dir, *, resume: bool, stage: str, run_settings: dict
) -> tuple[EpochCheckpoint, str | None]:
    """The checkpoint callback of a run and, when resuming, the checkpoint to start from.

    With ``resume``, the checkpoint in ``checkpoint_dir`` is checked against this run
    (same stage, same settings; the data split is checked when training starts) and the
    model's history is set to what it was at that checkpoint. Without a checkpoint there
    yet, the run starts from the beginning (so the same call works before and after an
    interruption).

    Returns
    -------
    The :class:`EpochCheckpoint` callback and the path to pass to ``trainer.fit(ckpt_path=)``
    (``None``: start from the beginning).
    """
    if checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir= that the interrupted run wrote to.")
    history_before = history_to_json(model.history_)
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not resume or not path.exists():
        if resume:
            logger.info("No checkpoint in %s yet: training starts from the beginning.", checkpoint_dir)
        saver = EpochCheckpoint(checkpoint_dir, stage=stage, run_settings=run_settings, history_before=history_before)
        return saver, None
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("callbacks", {}).get("scrobust_epoch_checkpoint")
    if state is None:
        raise ValueError(f"{path} was not written by scrobust-sc (no resume state).")
    if state["stage"] != stage:
        raise ValueError(f"{path} is a {state['stage']!r} checkpoint; it cannot resume {stage!r}.")
    current = json.loads(json.dumps(run_settings, default=str, sort_keys=True))
    differences = describe_mismatch(json.loads(state["run_settings"]), current)
    if differences:
        raise ValueError(
            f"{path} was written by a run with other settings ({'; '.join(differences)}). Resume with the same "
            "settings, or use another checkpoint_dir to start afresh."
        )
    history_before = json.loads(state["history_before"])
    model.history_ = append_history(history_from_json(history_before), history_from_json(json.loads(state["history"])))
    logger.info("Resuming %s from %s (after epoch %d).", stage, path, int(checkpoint["epoch"]) + 1)
    saver = EpochCheckpoint(checkpoint_dir, stage=stage, run_settings=run_settings, history_before=history_before)
    return saver, str(path)
