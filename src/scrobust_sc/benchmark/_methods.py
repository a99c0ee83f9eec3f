"""The annotators a benchmark compares: scRobust and the peers users would pick instead.

Every method takes a training and a test AnnData (raw counts, or log-normalised data the
same way for both) and returns a :class:`Prediction`: the most likely label of each test
cell and which cells the method itself would call "Unknown". The peers run through their
own packages (CellTypist, scvi-tools' scANVI, scikit-learn); nothing is re-implemented.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from ._baselines import _log_normalized, hvg_features

logger = logging.getLogger("scrobust_sc")

#: Peers without a novelty score call a cell "Unknown" when no class reaches this
#: probability (CellTypist's own ``p_thres`` in its "prob match" mode).
PEER_REJECTION_PROBABILITY = 0.5
#: Largest value of log1p(counts per 10,000) that CellTypist accepts.
CELLTYPIST_MAX_VALUE = 9.22


@dataclass
class Prediction:
    """Predicted labels, the cells the method rejects as "Unknown", and how novel each cell looks.

    Attributes
    ----------
    labels
        Most likely training label of each test cell.
    rejected
        ``True`` where the method would answer "Unknown".
    novelty
        Higher where a cell looks less like any training type (threshold-free, for AUROC):
        scRobust's novelty score; one minus the top class probability for the peers.

    Examples
    --------
    >>> import pandas as pd
    >>> Prediction.from_proba(pd.DataFrame({"a": [0.9, 0.4], "b": [0.1, 0.6]})).labels.tolist()
    ['a', 'b']
    """

    labels: np.ndarray
    rejected: np.ndarray
    novelty: np.ndarray | None = None

    @classmethod
    def from_proba(cls, proba: pd.DataFrame) -> Prediction:
        """Top class of each row; rejected below :data:`PEER_REJECTION_PROBABILITY`; novelty ``1 - max``."""
        values = proba.to_numpy()
        top = values.max(axis=1)
        return cls(
            proba.columns.to_numpy()[values.argmax(axis=1)].astype(str), top < PEER_REJECTION_PROBABILITY, 1.0 - top
        )


def _require(module: str, extra: str = "benchmark"):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"The {module!r} package is needed for this benchmark method: pip install 'scrobust-sc[{extra}]'."
        ) from err


def peer_features(
    train: ad.AnnData, test: ad.AnnData, modality: str = "rna", n_features: int = 2000, layer: str | None = None
):
    """Features of the linear and kNN peers, chosen on the training fold.

    RNA: log-normalised expression of the ``n_features`` (2,000) most variable genes. ATAC:
    TF-IDF (``log1p``, idf of the training fold) of the ``n_features`` most often accessible
    peaks, as in ``shared/data/BASELINES.md``. ``n_features=0`` keeps every gene or peak.

    Examples
    --------
    >>> xtr, xte = peer_features(train, test, modality="atac")  # doctest: +SKIP
    """
    if modality not in ("rna", "atac"):
        raise ValueError(f"modality must be 'rna' or 'atac', not {modality!r}.")
    if n_features < 0:
        raise ValueError(f"n_features must be a positive number of features, or 0 for all; got {n_features}.")
    every = n_features == 0 or n_features >= train.n_vars
    if modality == "rna":
        if every:
            tr, te = _log_normalized(train, layer), _log_normalized(test, layer)
            return tr.X, te[:, te.var_names.get_indexer(tr.var_names)].X
        return hvg_features(train, test, n_top_genes=n_features, layer=layer)
    from scrobust_sc.data import inverse_document_frequency, tfidf_matrix, top_peaks_mask

    xtr, xte = (train.X, test.X) if layer is None else (train.layers[layer], test.layers[layer])
    if not every:
        keep = top_peaks_mask(xtr, n_top=n_features)
        xtr, xte = xtr[:, keep], xte[:, keep]
    idf = inverse_document_frequency(xtr)
    return tfidf_matrix(xtr, idf), tfidf_matrix(xte, idf)


def _rna_only(name: str, modality: str) -> None:
    if modality != "rna":
        raise ValueError(f"{name} is an RNA annotator; it is not run on {modality} data.")


def logreg_method(
    train: ad.AnnData,
    test: ad.AnnData,
    labels_key: str,
    *,
    seed: int = 0,
    quick: bool = False,
    modality: str = "rna",
    layer: str | None = None,
    n_features: int = 2000,
    **_,
):
    """Logistic regression on the training fold's 2,000 HVGs (log-normalised, scaled), or TF-IDF peaks.

    ``n_features``: genes or peaks kept, see :func:`peer_features` (0: all).

    Examples
    --------
    >>> pred = logreg_method(train, test, "cell_type")  # doctest: +SKIP
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, xte = peer_features(train, test, modality, n_features=n_features, layer=layer)
    scaler = StandardScaler(with_mean=False).fit(xtr)
    clf = LogisticRegression(max_iter=100 if quick else 1000, random_state=seed)
    clf.fit(scaler.transform(xtr), train.obs[labels_key].astype(str).to_numpy())
    return Prediction.from_proba(pd.DataFrame(clf.predict_proba(scaler.transform(xte)), columns=clf.classes_))


def knn_method(
    train: ad.AnnData,
    test: ad.AnnData,
    labels_key: str,
    *,
    seed: int = 0,
    modality: str = "rna",
    layer: str | None = None,
    n_features: int = 2000,
    **_,
):
    """Nearest neighbours (k=15) on 50 PCs of the training fold's scaled, clipped HVGs; on LSI for ATAC.

    ``n_features``: genes or peaks kept, see :func:`peer_features` (0: all).

    ATAC: LSI, a truncated SVD of the TF-IDF peaks with the first component (depth) dropped
    and each cell's components scaled to unit length (see :func:`scrobust_sc.data.lsi`).

    Examples
    --------
    >>> pred = knn_method(train, test, "cell_type")  # doctest: +SKIP
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    xtr, xte = peer_features(train, test, modality, n_features=n_features, layer=layer)
    if modality == "atac":
        from scrobust_sc.data import lsi

        ztr, zte = lsi(xtr, xte, n_components=50, seed=seed)
        clf = KNeighborsClassifier(min(15, ztr.shape[0])).fit(ztr, train.obs[labels_key].astype(str))
        return Prediction.from_proba(pd.DataFrame(clf.predict_proba(zte), columns=clf.classes_))
    from scrobust_sc.data import check_dense_budget

    check_dense_budget(
        xtr.shape[0] + xte.shape[0],
        xtr.shape[1],
        np.float32,
        what=f"kNN's dense features ({xtr.shape[1]} genes)",
        fix="Pass fewer peer features (n_features= / --peer-features, e.g. 2000).",
    )
    xtr = xtr.toarray() if hasattr(xtr, "toarray") else np.asarray(xtr)
    xte = xte.toarray() if hasattr(xte, "toarray") else np.asarray(xte)
    scaler = StandardScaler().fit(xtr)
    ztr, zte = np.clip(scaler.transform(xtr), -10, 10), np.clip(scaler.transform(xte), -10, 10)
    pca = PCA(n_components=min(50, ztr.shape[1] - 1, ztr.shape[0] - 1), random_state=seed).fit(ztr)
    clf = KNeighborsClassifier(min(15, ztr.shape[0])).fit(pca.transform(ztr), train.obs[labels_key].astype(str))
    return Prediction.from_proba(pd.DataFrame(clf.predict_proba(pca.transform(zte)), columns=clf.classes_))


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Hide a library's INFO messages (warnings still show), then restore its level."""
    library_logger = logging.getLogger(name)
    level = library_logger.level
    library_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        library_logger.setLevel(level)


def celltypist_method(
    train: ad.AnnData,
    test: ad.AnnData,
    labels_key: str,
    *,
    seed: int = 0,
    quick: bool = False,
    modality: str = "rna",
    **_,
):
    """CellTypist trained on the training fold (all genes, log1p CP10k), as in BASELINES.md.

    ``celltypist.train(feature_selection=False, max_iter=200)``, then
    ``celltypist.annotate(majority_voting=False)``; a cell is rejected when no type
    reaches probability 0.5 (CellTypist's "prob match" rule).

    Examples
    --------
    >>> pred = celltypist_method(train, test, "cell_type")  # doctest: +SKIP
    """
    _rna_only("CellTypist", modality)
    celltypist = _require("celltypist")
    tr, te = _celltypist_scale(_log_normalized(train, None)), _celltypist_scale(_log_normalized(test, None))
    tr.obs[labels_key] = train.obs[labels_key].astype(str).to_numpy()
    np.random.seed(seed)
    with _quiet("celltypist"):  # it logs every step at INFO level
        model = celltypist.train(
            tr, labels=labels_key, feature_selection=False, max_iter=20 if quick else 200, check_expression=False
        )
        result = celltypist.annotate(te, model=model, majority_voting=False)
    return Prediction.from_proba(result.probability_matrix.loc[:, list(model.cell_types)])


def _celltypist_scale(adata: ad.AnnData) -> ad.AnnData:
    """Log-normalised values above CellTypist's range read as ``log2(x + 1)``, redone as log1p CP10k.

    Files such as xin_pancreas_scclassify ship ``log2(CPM + 1)``, which CellTypist refuses.
    """
    import scanpy as sc

    vmax = float(adata.X.max())
    if vmax <= CELLTYPIST_MAX_VALUE:
        return adata
    logger.warning(
        "Values reach %.1f, above log1p of counts per 10,000: read as log2(x + 1) and redone as "
        "log1p(CP10k) for CellTypist.",
        vmax,
    )
    out = adata.copy()
    if hasattr(out.X, "expm1"):
        out.X = (out.X * np.log(2.0)).expm1()
    else:
        out.X = np.expm1(np.asarray(out.X) * np.log(2.0))
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def scanvi_method(
    train: ad.AnnData,
    test: ad.AnnData,
    labels_key: str,
    *,
    seed: int = 0,
    quick: bool = False,
    modality: str = "rna",
    **_,
):
    """scANVI, transductive: test cells unlabelled, from an SCVI model on 2,000 training-fold HVGs.

    As in BASELINES.md: raw counts, ``SCVI(n_layers=2, n_latent=30)`` for up to 100 epochs,
    then ``SCANVI`` for 20 epochs with ``n_samples_per_label=100``.

    Examples
    --------
    >>> pred = scanvi_method(train, test, "cell_type")  # doctest: +SKIP
    """
    import scanpy as sc
    import scvi

    _rna_only("scANVI", modality)
    if not _counts_like(train.X):
        raise ValueError("scANVI needs raw counts; this dataset holds log-normalised values.")
    hvg = ad.AnnData(train.X.copy(), var=pd.DataFrame(index=train.var_names))
    sc.pp.highly_variable_genes(hvg, n_top_genes=min(2000, hvg.n_vars - 1), flavor="seurat_v3")
    genes = train.var_names[hvg.var["highly_variable"].to_numpy()]
    both = ad.concat([train[:, genes], test[:, genes]], label="_split", keys=["train", "test"], index_unique="-")
    labels = np.concatenate([train.obs[labels_key].astype(str).to_numpy(), np.full(test.n_obs, "Unknown")])
    both = ad.AnnData(both.X.astype(np.float32), obs=pd.DataFrame({"_label": labels}, index=both.obs_names))
    both.var_names = np.asarray(genes)
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(both, labels_key="_label")
    quiet = {"enable_progress_bar": False}
    vae = scvi.model.SCVI(both, n_layers=2, n_latent=30)
    vae.train(max_epochs=2 if quick else 100, early_stopping=True, **quiet)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    model.train(max_epochs=1 if quick else 20, n_samples_per_label=100, **quiet)
    proba = model.predict(both[train.n_obs :], soft=True)
    return Prediction.from_proba(proba.loc[:, [c for c in proba.columns if c != "Unknown"]])


def _counts_like(x) -> bool:
    data = x.data if hasattr(x, "data") else np.asarray(x).ravel()
    return bool(np.all(np.mod(data[:1_000_000], 1) == 0))


#: scRobust at test sizes (``--quick``)
QUICK_SCROBUST = {
    "model_kwargs": {"d_model": 32, "n_heads": 2},
    "pretrain_kwargs": {"max_steps": 20},
    "train_kwargs": {"max_epochs": 2, "n_genes": 200},
}


#: Keys that :func:`scrobust_method` reads from its ``options``
SCROBUST_OPTIONS = (
    "pretrain",
    "pretrain_on_test",
    "model_kwargs",
    "pretrain_kwargs",
    "train_kwargs",
    "setup_kwargs",
    "novelty_neighbors",
)


def check_methods(methods) -> None:
    """Refuse a method list that names no method or one that is not in :data:`METHODS`.

    Examples
    --------
    >>> check_methods(["logreg", "knn"])
    >>> check_methods(["logreg", "foo"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown methods ['foo']; choose from ['scrobust', 'celltypist', 'scanvi', 'logreg', 'knn'].
    """
    if not methods:
        raise ValueError(f"The method list names no method; choose from {list(METHODS)}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")


def check_scrobust_options(options: dict | None) -> None:
    """Refuse scRobust options that :func:`scrobust_method` would not read.

    Parameters
    ----------
    options
        ``None`` or a dict whose keys are in :data:`SCROBUST_OPTIONS`.

    Raises
    ------
    ValueError
        If ``options`` is not a dict, or names a key that would otherwise be ignored
        silently (a misspelling such as ``"train_kwarg"``, or ``"threads"``).

    Examples
    --------
    >>> check_scrobust_options({"pretrain": False, "train_kwargs": {"max_epochs": 5}})
    >>> check_scrobust_options({"epochs": 5})
    Traceback (most recent call last):
    ...
    ValueError: Unknown scrobust_options ['epochs']; ...
    """
    if options is None:
        return
    if not isinstance(options, dict):
        raise ValueError(f"scrobust_options must be a dict (a JSON object), not {type(options).__name__}.")
    unknown = sorted(set(options) - set(SCROBUST_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown scrobust_options {unknown}; use {list(SCROBUST_OPTIONS)} "
            '(training settings go in train_kwargs, e.g. {"train_kwargs": {"max_epochs": 5}}).'
        )


def scrobust_method(
    train: ad.AnnData,
    test: ad.AnnData,
    labels_key: str,
    *,
    seed: int = 0,
    quick: bool = False,
    options: dict | None = None,
    modality: str = "rna",
    **_,
):
    """Run scRobust through :func:`scrobust_sc.tl.fit_annotator` with the package defaults.

    ``options`` may hold ``pretrain`` (bool), ``pretrain_on_test`` (bool: pre-train on the
    training and the test cells, the test labels hidden, as scANVI sees the test cells and
    as ``tl.annotate(adata, labels_key=...)`` pre-trains on unlabelled cells; fine-tuning
    still reads the training labels only), ``model_kwargs``, ``pretrain_kwargs``,
    ``train_kwargs``, ``setup_kwargs`` (e.g. ``{"atac_values": "tfidf"}``) and
    ``novelty_neighbors`` (as :func:`scrobust_sc.tl.annotate`'s; ``None``: each cell's own
    novelty); ``quick`` shrinks the model and the training. Cells are rejected as
    ``tl.annotate`` rejects them by default: novelty above its threshold, read over each
    test cell's neighbourhood among the test cells for RNA.

    Examples
    --------
    >>> pred = scrobust_method(train, test, "cell_type", options={"pretrain": False})  # doctest: +SKIP
    """
    import scvi

    from scrobust_sc.tl import fit_annotator
    from scrobust_sc.tl._annotate import DEFAULT_NOVELTY_THRESHOLD, novelty_over_neighbourhoods
    from scrobust_sc.tl._novelty import DEFAULT_NOVELTY_NEIGHBORS

    check_scrobust_options(options)
    options = dict(options or {})
    base = QUICK_SCROBUST if quick else {}
    kwargs = {
        key: {**base.get(key, {}), **options.get(key, {})}
        for key in ("model_kwargs", "pretrain_kwargs", "train_kwargs")
    }
    silent = {"enable_progress_bar": False}
    scvi.settings.seed = seed
    pretrain_on_test = options.get("pretrain_on_test", False) and options.get("pretrain", True)
    model = fit_annotator(
        train,
        labels_key,
        unlabelled=test if pretrain_on_test else None,
        model_kwargs=kwargs["model_kwargs"],
        pretrain=options.get("pretrain", True),
        pretrain_kwargs={**silent, **kwargs["pretrain_kwargs"]},
        train_kwargs={**silent, **kwargs["train_kwargs"]},
        modality=modality,
        setup_kwargs=options.get("setup_kwargs"),
    )
    proba, novelty = model._classify_cells(test, None, 256)
    smoothed = novelty_over_neighbourhoods(
        model, test, novelty, options.get("novelty_neighbors", DEFAULT_NOVELTY_NEIGHBORS)
    )
    novelty = novelty if smoothed is None else smoothed
    labels = Prediction.from_proba(proba).labels
    return Prediction(labels, novelty > DEFAULT_NOVELTY_THRESHOLD, np.asarray(novelty, dtype=float))


#: Method name -> function(train, test, labels_key, *, seed, quick, options) -> Prediction
METHODS: dict[str, Callable[..., Prediction]] = {
    "scrobust": scrobust_method,
    "celltypist": celltypist_method,
    "scanvi": scanvi_method,
    "logreg": logreg_method,
    "knn": knn_method,
}

#: The paper's ablation (Fig. 3d): variant name -> scRobust options
ABLATION_VARIANTS: dict[str, dict] = {
    "scrobust (default: pre-trained, mixed genes)": {},
    "no pre-training": {"pretrain": False},
    "random genes": {"train_kwargs": {"gene_selection": "random"}},
    "HVGs": {"train_kwargs": {"gene_selection": "hvg"}},
    "highly unique genes": {"train_kwargs": {"gene_selection": "unique"}},
}
