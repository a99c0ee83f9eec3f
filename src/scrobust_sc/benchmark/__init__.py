"""Evaluation protocols, the peers they compare against, and their reports."""

from ._baselines import hvg_features, knn_pca_baseline, logistic_regression_baseline, majority_baseline
from ._methods import (
    ABLATION_VARIANTS,
    METHODS,
    SCROBUST_OPTIONS,
    Prediction,
    celltypist_method,
    check_methods,
    check_scrobust_options,
    knn_method,
    logreg_method,
    peer_features,
    scanvi_method,
    scrobust_method,
)
from ._metrics import classification_scores, novel_type_scores
from ._report import markdown_table, plot_benchmark, summarize, write_report
from ._run import COLUMNS, PROTOCOLS, SHARED_PRETRAINING_NOTE, quick_subset, run_benchmark, share_pretraining
from ._splits import Split, cross_splits, cv_splits, novel_splits

__all__ = [
    "ABLATION_VARIANTS",
    "COLUMNS",
    "METHODS",
    "PROTOCOLS",
    "Prediction",
    "SCROBUST_OPTIONS",
    "SHARED_PRETRAINING_NOTE",
    "Split",
    "celltypist_method",
    "check_methods",
    "check_scrobust_options",
    "classification_scores",
    "cross_splits",
    "cv_splits",
    "hvg_features",
    "knn_method",
    "knn_pca_baseline",
    "logistic_regression_baseline",
    "logreg_method",
    "majority_baseline",
    "markdown_table",
    "novel_splits",
    "novel_type_scores",
    "peer_features",
    "plot_benchmark",
    "quick_subset",
    "run_benchmark",
    "scanvi_method",
    "scrobust_method",
    "share_pretraining",
    "summarize",
    "write_report",
]
