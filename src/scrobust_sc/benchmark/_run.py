"""Run the benchmark protocols: the same seeded splits for every method, tidy results."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scrobust_sc.pp import add_dropout

from ._methods import ABLATION_VARIANTS, METHODS, Prediction, check_methods, check_scrobust_options
from ._metrics import classification_scores, novel_type_scores
from ._splits import Split, cross_splits, cv_splits, novel_splits

logger = logging.getLogger("scrobust_sc")

PROTOCOLS = ("cv", "dropout", "novel", "cross", "ablation")
#: Columns of the tidy result table
COLUMNS = ["dataset", "protocol", "dropout", "method", "repeat", "fold", "metric", "value", "seconds", "note"]
#: ``--quick``: at most this many cells (stratified) and this many splits
QUICK_CELLS, QUICK_SPLITS = 300, 2
#: ``note`` of an ablation variant that started from the split's shared pre-training
SHARED_PRETRAINING_NOTE = "pre-training shared with the split's first pre-trained variant (not in seconds)"


def quick_subset(adata: ad.AnnData, labels_key: str, n_cells: int = QUICK_CELLS, seed: int = 0) -> ad.AnnData:
    """At most ``n_cells`` cells, the same share of every type (at least 5 cells each where possible).

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> quick_subset(scrobust.data.pbmc_demo(), "cell_type", 100).n_obs <= 110
    True
    """
    if adata.n_obs <= n_cells:
        return adata.copy()
    rng = np.random.default_rng(seed)
    labels = adata.obs[labels_key].astype(str).to_numpy()
    keep = []
    for label in np.unique(labels):
        cells = np.flatnonzero(labels == label)
        n = max(min(5, cells.size), round(cells.size * n_cells / adata.n_obs))
        keep.append(rng.choice(cells, n, replace=False))
    return adata[np.sort(np.concatenate(keep))].copy()


def _splits(protocol: str, adata: ad.AnnData, labels_key: str, n_folds: int, seed: int, split_key: str | None):
    labels = adata.obs[labels_key].astype(str).to_numpy()
    if protocol == "novel":
        return novel_splits(labels, n_folds=n_folds, seed=seed)
    if protocol == "cross":
        if split_key is None or split_key not in adata.obs.columns:
            raise ValueError(
                f"Protocol 'cross' needs split_key= (--split-key) naming an obs column such as 'platform'; "
                f"got {split_key!r} (columns: {list(adata.obs.columns)})."
            )
        return cross_splits(adata.obs[split_key].astype(str).to_numpy(), labels)
    return cv_splits(labels, n_folds, seed=seed)


def share_pretraining(options: dict | None, folder: str) -> dict | None:
    """Options under which the pre-trained variants of one split pre-train once, in ``folder``.

    The first variant that pre-trains writes its finished run to ``folder``
    (``checkpoint_dir``); the next ones resume it, which skips their pre-training and leaves
    the weights and the random state as that run left them. Each variant then scores as if it
    had pre-trained alone. Options without pre-training, or with their own
    ``checkpoint_dir``, are returned unchanged.

    Examples
    --------
    >>> share_pretraining({"train_kwargs": {"gene_selection": "hvg"}}, "/tmp/fold0")["pretrain_kwargs"]
    {'checkpoint_dir': '/tmp/fold0', 'resume': True}
    >>> share_pretraining({"pretrain": False}, "/tmp/fold0")
    {'pretrain': False}
    """
    if options is None or not options.get("pretrain", True):
        return options
    pretrain_kwargs = options.get("pretrain_kwargs", {})
    if "checkpoint_dir" in pretrain_kwargs:
        return options
    return {**options, "pretrain_kwargs": {**pretrain_kwargs, "checkpoint_dir": folder, "resume": True}}


def _score(protocol: str, y_true: np.ndarray, pred: Prediction, split: Split) -> dict[str, float]:
    if protocol == "novel":
        return novel_type_scores(y_true, pred.labels, pred.rejected, split.held_out, pred.novelty)
    scores = classification_scores(y_true, pred.labels)
    scores["rejected"] = float(np.mean(pred.rejected))
    return scores


def run_benchmark(
    adata: ad.AnnData,
    labels_key: str = "cell_type",
    *,
    protocol: str = "cv",
    methods: Sequence[str] = ("scrobust", "logreg"),
    n_folds: int = 5,
    folds: Sequence[int] | None = None,
    repeats: int = 1,
    seed: int = 0,
    split_key: str | None = None,
    dropout_rates: Sequence[float] = (0.3, 0.5),
    scrobust_options: dict | None = None,
    peer_features: int = 2000,
    quick: bool = False,
    dataset: str = "data",
    modality: str = "rna",
    on_split: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Run one protocol for several methods on the same seeded splits.

    Parameters
    ----------
    adata
        Cells with raw counts in ``X`` (or log-normalised values, for the methods that take them)
        and labels in ``obs[labels_key]``.
    labels_key
        Column of cell-type labels.
    protocol
        ``"cv"`` (stratified k-fold), ``"dropout"`` (k-fold on counts with additional
        dropout, see :func:`scrobust_sc.pp.add_dropout`), ``"novel"`` (each type left out
        of training in turn), ``"cross"`` (train on one value of ``split_key``, test on
        the rest) or ``"ablation"`` (scRobust variants of the paper's Fig. 3d; the
        pre-trained variants of a split share one pre-training, see
        :func:`share_pretraining`).
    methods
        Names in :data:`METHODS`; ignored by ``"ablation"``.
    n_folds
        Folds of the stratified split (``StratifiedKFold(shuffle=True, random_state=seed + repeat)``).
    folds
        Run only these split indices (``None``: all).
    repeats
        Repetitions with seeds ``seed, seed + 1, ...``.
    seed
        Seed of the splits, the dropout and the methods.
    split_key
        Column of batches or platforms (protocol ``"cross"``).
    dropout_rates
        Additional dropout rates (protocol ``"dropout"``).
    scrobust_options
        Options of :func:`~scrobust_sc.benchmark.scrobust_method` (``pretrain``,
        ``model_kwargs``, ``pretrain_kwargs``, ``train_kwargs``).
    peer_features
        Genes (most variable) or peaks (most often accessible) that logistic regression and
        kNN read, chosen on each training fold; 0 for all (see
        :func:`~scrobust_sc.benchmark.peer_features`). 2,000 as in ``BASELINES.md``.
    quick
        A tiny configuration (at most 300 cells, 2 splits, small models, few epochs) that
        checks the harness in a couple of minutes; its scores mean nothing.
    dataset
        Name written in the ``dataset`` column.
    modality
        ``"rna"`` or ``"atac"`` (peaks: scRobust on binarised peaks, the linear and kNN
        peers on TF-IDF and LSI; CellTypist and scANVI are RNA-only).
    on_split
        Called with the results so far after every split (e.g. to write them to disk, so
        that an interrupted run keeps its finished splits).

    Returns
    -------
    Tidy table with columns :data:`COLUMNS`; a method that fails on a split gives a row
    with metric ``"error"`` and the message in ``note`` instead of stopping the run.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> adata = scrobust.data.pbmc_demo()
    >>> table = scrobust.benchmark.run_benchmark(adata, methods=["logreg"], quick=True)
    >>> sorted(table.query("metric == 'f1_macro'")["fold"])
    ['fold 0', 'fold 1']
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}.")
    if labels_key not in adata.obs.columns:
        columns = list(adata.obs.columns)
        raise ValueError(f"labels_key={labels_key!r} is not a column of adata.obs (columns: {columns}).")
    check_scrobust_options(scrobust_options)
    if protocol == "ablation":
        variants = {name: _variant_options(scrobust_options, opts) for name, opts in ABLATION_VARIANTS.items()}
        runs = [(name, "scrobust", opts) for name, opts in variants.items()]
    else:
        check_methods(methods)
        runs = [(m, m, scrobust_options if m == "scrobust" else None) for m in methods]
    adata = adata[adata.obs[labels_key].notna().to_numpy()]
    if quick:
        adata = quick_subset(adata, labels_key, seed=seed)
    rates = list(dropout_rates) if protocol == "dropout" else [0.0]
    rows = []
    for repeat in range(repeats):
        for rate in rates:
            data = add_dropout(adata, rate, seed=seed + repeat) if rate > 0 else adata
            splits = _splits(protocol, data, labels_key, n_folds, seed + repeat, split_key)
            if folds is not None:
                splits = [s for s in splits if s.fold in set(folds)]
            if quick:
                splits = splits[:QUICK_SPLITS]
            labels = data.obs[labels_key].astype(str).to_numpy()
            for split in splits:
                train, test = data[split.train].copy(), data[split.test].copy()
                shared = tempfile.TemporaryDirectory(prefix="scrobust-ablation-") if protocol == "ablation" else None
                for name, method, options in runs:
                    note = split.note
                    if shared is not None:  # the variants share one pre-training a split
                        sharing = share_pretraining(options, shared.name)
                        resumed = sharing != options and any(Path(shared.name).iterdir())
                        options = sharing
                        note = "; ".join(filter(None, [note, SHARED_PRETRAINING_NOTE if resumed else ""]))
                    base = {"dataset": dataset, "protocol": protocol, "dropout": rate, "method": name}
                    base |= {"repeat": repeat, "fold": split.name}
                    start = time.perf_counter()
                    try:
                        pred = METHODS[method](
                            train,
                            test,
                            labels_key,
                            seed=seed + repeat,
                            quick=quick,
                            options=options,
                            modality=modality,
                            n_features=peer_features,
                        )
                    except Exception as err:  # noqa: BLE001 - one failing peer must not stop the run
                        logger.warning("%s failed on %s: %s", name, split.name, err)
                        rows.append(base | {"metric": "error", "value": np.nan, "seconds": np.nan, "note": str(err)})
                        continue
                    seconds = time.perf_counter() - start
                    scores = _score(protocol, labels[split.test], pred, split)
                    logger.info("%s %s %s: %s", dataset, name, split.name, _brief(scores))
                    rows += [
                        base | {"metric": k, "value": v, "seconds": seconds, "note": note} for k, v in scores.items()
                    ]
                if shared is not None:
                    shared.cleanup()
                if on_split is not None:
                    on_split(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS)


def _variant_options(options: dict | None, variant: dict) -> dict:
    """An ablation variant's options over the user's: keyword dictionaries merged key by key.

    Examples
    --------
    >>> _variant_options({"train_kwargs": {"n_genes": 200}}, {"train_kwargs": {"gene_selection": "hvg"}})
    {'train_kwargs': {'n_genes': 200, 'gene_selection': 'hvg'}}
    """
    out = dict(options or {})
    for key, value in variant.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else value
    return out


def _brief(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if ":" not in k)
