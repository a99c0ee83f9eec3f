"""Training plans (Lightning, through scvi-tools)."""

from ._plans import ClassifierPlan, PretrainingPlan
from ._runner import InterruptRecorder, StageRunner
from ._schedule import warmup_cosine

__all__ = ["ClassifierPlan", "InterruptRecorder", "PretrainingPlan", "StageRunner", "warmup_cosine"]
