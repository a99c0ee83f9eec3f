"""Training runner that keeps the history of every stage."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from scvi.train import TrainRunner
from scvi.train._trainrunner import _safe_load_logger_history

from ._checkpoint import append_history


class StageRunner(TrainRunner):
    """scvi-tools ``TrainRunner`` whose history appends runs and adds new keys.

    The stock runner drops metrics that the first run did not log, which loses the
    fine-tuning metrics after pre-training.
    """

    def _update_history(self):
        if not self.trainer.is_global_zero:
            if self.model.history_ is None:
                self.model.history_ = {}
            return
        new = _safe_load_logger_history(self.trainer) or {}
        self.model.history_ = append_history(self.model.history_, new)


class InterruptRecorder(Callback):
    """Records the epoch at which training was interrupted by Ctrl+C (``KeyboardInterrupt``)."""

    def __init__(self):
        self.epoch: int | None = None

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, KeyboardInterrupt):
            self.epoch = trainer.current_epoch
