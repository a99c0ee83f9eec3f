"""Training plans (Lightning, through scvi-tools)."""

from ._checkpoint import CHECKPOINT_FILE, EpochCheckpoint, SafeCheckpointIO, prepare_checkpointing, read_checkpoint
from ._monitor import KNN_EVALUATIONS, KNN_METRIC, KNNMonitor, knn_accuracy, knn_sample
from ._plans import ClassifierPlan, PretrainingPlan
from ._runner import InterruptRecorder, StageRunner
from ._schedule import warmup_cosine

__all__ = [
    "CHECKPOINT_FILE",
    "ClassifierPlan",
    "EpochCheckpoint",
    "InterruptRecorder",
    "KNNMonitor",
    "KNN_EVALUATIONS",
    "KNN_METRIC",
    "PretrainingPlan",
    "SafeCheckpointIO",
    "StageRunner",
    "knn_accuracy",
    "knn_sample",
    "prepare_checkpointing",
    "read_checkpoint",
    "warmup_cosine",
]
