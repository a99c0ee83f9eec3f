"""Evaluation protocols and peer baselines."""

from ._baselines import hvg_features, knn_pca_baseline, logistic_regression_baseline, majority_baseline

__all__ = ["hvg_features", "knn_pca_baseline", "logistic_regression_baseline", "majority_baseline"]
