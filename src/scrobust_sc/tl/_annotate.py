"""``scrobust.tl.annotate``: cell types in one call."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse
from scvi.data._constants import _SETUP_ARGS_KEY

from scrobust_sc._constants import DEFAULT_KEY, EMBEDDING_KEY, MISSING_AS_TEXT, UNKNOWN_LABEL
from scrobust_sc.data._alignment import align_to_genes, missing_layer_error, query_gene_names
from scrobust_sc.data._memory import matrix_in_memory
from scrobust_sc.data._peaks import peak_names
from scrobust_sc.data._validation import check_finite_nonnegative, detect_input_kind
from scrobust_sc.model._model import restrict_labels

from ._labels import write_label_column
from ._novelty import DEFAULT_NOVELTY_NEIGHBORS, neighbourhood_novelty, reads_neighbourhoods

logger = logging.getLogger("scrobust_sc")

#: Default confidence (largest class probability) under which a cell is called "Unknown":
#: none. Measured (docs/design.md), a probability threshold catches almost no cells of
#: unseen types and rejects known cells; novelty does the job.
DEFAULT_UNKNOWN_THRESHOLD = None
#: Default novelty (:meth:`~scrobust_sc.model.SCRobust.predict_novelty`, each of its two
#: scores 1 at its own threshold) above which a cell is called "Unknown".
DEFAULT_NOVELTY_THRESHOLD = 1.0
#: Share of "Unknown" calls above which ``annotate`` warns: a query from another platform
#: or batch than the reference can look novel as a whole (docs/benchmarks.md, "Cross-platform").
UNKNOWN_SHARE_WARNING = 0.2
#: The entries of ``uns[key_added]`` that ``annotate`` writes; others (``tl.embed``'s record) are
#: kept, unless ``annotate`` replaced the embedding that record describes.
ANNOTATION_UNS_KEYS = ("params", "cell_types", "gene_alignment")
#: ``get_latent_representation`` settings of the embedding ``annotate`` stores (its defaults).
ANNOTATION_EMBEDDING = {"layer": -1, "gene_selection": "unique", "n_genes": 1000}
#: Cells of a backed query checked before training (its first ones; the rest when annotated).
QUERY_CHECK_CELLS = 8192
#: ``layer=`` value that reads a query's ``X`` (for a model set up on a layer).
X_LAYER = "X"


def _embedded_into(record) -> str | None:
    """The ``obsm`` key a ``tl.embed`` record in ``uns`` describes, or ``None``."""
    params = record.get("params") if isinstance(record, dict) else None
    return params.get("key_added") if isinstance(params, dict) else None


def _warn_about_suspicious_labels(labels: pd.Series, labels_key: str) -> None:
    """Warn about labels that look like mistakes; they are still taught as given.

    Two types that differ only by surrounding spaces, and missing values turned into text
    (``"nan"``), each become a cell type of their own.
    """
    names = pd.Index(labels.unique()).astype(str)
    stripped = names.str.strip()
    per_stripped = pd.Series(stripped).value_counts()
    padded = [name for name, bare in zip(names, stripped, strict=True) if per_stripped[bare] > 1]
    if padded:
        logger.warning(
            "adata.obs[%r] has types that differ only by surrounding spaces (%s); they are taught as different "
            "types. Strip them first: adata.obs[%r] = adata.obs[%r].str.strip().",
            labels_key,
            ", ".join(repr(n) for n in sorted(set(padded))),
            labels_key,
            labels_key,
        )
    as_text = [n for n in names if n in MISSING_AS_TEXT]
    if as_text:
        logger.warning(
            "adata.obs[%r] labels %d cells %s, which looks like a missing value turned into text; they are taught "
            "as a type of that name. Set them to NaN to leave them unlabelled.",
            labels_key,
            int(labels.isin(as_text).sum()),
            " or ".join(repr(n) for n in as_text),
        )


def _unlabelled_category(setup_kwargs: dict | None) -> str:
    """The label that marks unlabelled cells: ``setup_kwargs["unlabeled_category"]`` as text, or "Unknown"."""
    return str((setup_kwargs or {}).get("unlabeled_category", UNKNOWN_LABEL))


def _obs_keys(setup_kwargs: dict | None) -> dict[str, str]:
    """The ``obs`` columns that ``setup_kwargs`` name (e.g. ``batch_key``), by argument name."""
    return {arg: key for arg, key in (setup_kwargs or {}).items() if arg.endswith("_key") and key is not None}


def _as_text(column: pd.Series) -> pd.Categorical:
    """``column`` as categorical text (numbers, booleans), missing values kept missing."""
    values = column.astype(object).to_numpy()
    text = values.astype(str).astype(object)
    text[pd.isna(values)] = np.nan
    return pd.Categorical(text)


def _training_view(
    adata: ad.AnnData, labels_key: str, layer: str | None, modality: str = "rna", setup_kwargs: dict | None = None
) -> ad.AnnData:
    """A light AnnData sharing ``adata``'s counts, with NaN and "Unknown" labels marked unlabelled.

    Unlabelled cells carry ``setup_kwargs``' ``unlabeled_category`` (default "Unknown"), so that
    they are never a taught type; "Unknown", the call for cells of no known type, is never
    taught either. Of ``obs`` it keeps the labels and the columns ``setup_kwargs`` name
    (``batch_key``, as text). For ATAC its ``var_names`` are the canonical peak names. Of
    ``var``'s columns only ``gene_symbols`` is kept (``setup_anndata`` reads the names from it).
    A backed ``adata`` (``read_h5ad(path, backed="r")``) has its matrix read into memory, as
    training needs it: sparse stays sparse, dense is checked against the memory budget.
    """
    setup_kwargs = setup_kwargs or {}
    for arg, key in {"labels_key": labels_key, **_obs_keys(setup_kwargs)}.items():
        if key not in adata.obs.columns:
            raise ValueError(f"{arg}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    unlabelled = _unlabelled_category(setup_kwargs)
    labels = adata.obs[labels_key].astype(object)
    labels = labels.where(labels.notna(), unlabelled).astype(str)
    n_unknown = int((labels == UNKNOWN_LABEL).sum()) if unlabelled != UNKNOWN_LABEL else 0
    if n_unknown:
        logger.info(
            "%d cells of adata.obs[%r] labelled %r are left unlabelled, as %r cells are: %r is the call for cells "
            "of no known type, never a taught type.",
            n_unknown,
            labels_key,
            UNKNOWN_LABEL,
            unlabelled,
            UNKNOWN_LABEL,
        )
        labels = labels.where(labels != UNKNOWN_LABEL, unlabelled)
    if (labels == unlabelled).all():
        marks = ", ".join(repr(m) for m in dict.fromkeys([UNKNOWN_LABEL, unlabelled]))
        raise ValueError(f"adata.obs[{labels_key!r}] has no labelled cell (all NaN or {marks}).")
    _warn_about_suspicious_labels(labels, labels_key)
    obs = pd.DataFrame({labels_key: pd.Categorical(labels)}, index=adata.obs_names.copy())
    for key in _obs_keys(setup_kwargs).values():
        if key != labels_key:
            obs[key] = _as_text(adata.obs[key])
    matrix = _counts(adata, layer)
    if adata.isbacked:
        matrix = matrix_in_memory(matrix, what="Reading the backed (on-disk) reference matrix into memory for training")
    var = pd.DataFrame(index=peak_names(adata) if modality == "atac" else adata.var_names.copy())
    gene_symbols = setup_kwargs.get("gene_symbols")
    if gene_symbols is not None and gene_symbols in adata.var.columns:
        var[gene_symbols] = adata.var[gene_symbols].to_numpy()
    if layer is None:
        return ad.AnnData(X=matrix, obs=obs, var=var)
    return ad.AnnData(X=None, obs=obs, var=var, layers={layer: matrix})


def _counts(adata: ad.AnnData, layer: str | None):
    """``adata``'s counts: ``X``, or ``layers[layer]``."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}).")
    return adata.layers[layer]


def check_copy_of_backed(adata: ad.AnnData, copy: bool) -> None:
    """Refuse ``copy=True`` of a backed AnnData before any work: anndata cannot copy one to memory."""
    if copy and adata.isbacked:
        raise ValueError(
            "copy=True cannot copy an AnnData opened with backed='r': annotate it in place (copy=False; only its "
            "obs, obsm and uns change, in memory, not the file), or load it first with adata.to_memory()."
        )


def _query_in_models_layer(adata: ad.AnnData, model, layer: str | None) -> ad.AnnData:
    """``adata``, or a light AnnData holding its ``layers[layer]`` where ``model`` reads its counts.

    A saved model reads the layer it was set up with; ``layer=`` names where this query keeps
    its counts, which may be elsewhere (e.g. ``X`` log-normalised, counts in ``layers["counts"]``;
    or counts in ``X`` for a model set up on a layer: ``layer="X"``).
    """
    registered = model.registry_[_SETUP_ARGS_KEY].get("layer")
    if layer is None and registered is not None and registered not in adata.layers:
        raise missing_layer_error(registered, adata.layers.keys())  # also for a backed query, read in chunks
    if layer is None or layer == registered or (layer == X_LAYER and registered is None):
        return adata
    if adata.isbacked:  # streamed from the file: the model's layer, or X where the file lacks that layer
        if layer == X_LAYER and registered not in adata.layers:
            return adata
        raise ValueError(
            f"A backed query is read where the model reads its counts (layers[{registered!r}], or X when the "
            f"file lacks that layer), not from layer={layer!r}. Load it in memory (`adata.to_memory()`, or "
            "without --backed), or store its counts in that layer of the file."
        )
    matrix = adata.X if layer == X_LAYER else _counts(adata, layer)
    if matrix is None:
        raise ValueError(
            "layer='X' reads adata.X, which is None: pass the layer that holds the counts "
            f"(layers: {list(adata.layers.keys())})."
        )
    return ad.AnnData(
        X=matrix if registered is None else None,
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=adata.var.copy(),
        layers=None if registered is None else {registered: matrix},
    )


def _named_by(adata: ad.AnnData, gene_symbols: str) -> ad.AnnData:
    """A light AnnData sharing ``adata``'s matrices and ``obs``; its genes named by the column ``gene_symbols``."""
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=query_gene_names(adata, gene_symbols)),
        layers={k: adata.layers[k] for k in adata.layers},
    )


def novelty_over_neighbourhoods(model, adata: ad.AnnData, novelty: np.ndarray, n_neighbors: int | None):
    """``novelty`` of ``adata``'s cells read over neighbourhoods, as ``annotate`` reads it; ``None`` if not.

    Not for ``n_neighbors=None`` nor for peaks. The neighbours come from the matrix the model
    reads (its registered layer) of ``adata``, whose cells are those of ``novelty``.

    Examples
    --------
    >>> smoothed = novelty_over_neighbourhoods(model, query, model.predict_novelty(query), 15)  # doctest: +SKIP
    """
    if n_neighbors is None or model.modality != "rna":
        return None
    if not reads_neighbourhoods(novelty.shape[0], int(n_neighbors)):
        return None  # each cell's own novelty, recorded as such
    layer = model.registry_[_SETUP_ARGS_KEY].get("layer")
    if layer is not None and adata.isbacked and layer not in adata.layers:
        layer = None  # a backed file read from its X (layer="X"), as the model's batches read it
    return neighbourhood_novelty(
        novelty,
        _counts(adata, layer),
        input_is_log=bool(model.module.input_is_log),
        n_neighbors=int(n_neighbors),
    )


def _whole_query_shift(novelty: np.ndarray, threshold: float | None) -> str:
    """A sentence for the many-"Unknown" warning when the query's median novelty is above the threshold."""
    if threshold is None or novelty.size == 0:
        return ""
    median = float(np.median(novelty))
    if median <= threshold:
        return ""
    return (
        f" The query's median novelty is {median:.2f}, above the threshold {threshold:.2f}: the query as a "
        "whole lies beyond the reference, as after a platform or batch shift (or in a query of unseen types only)."
    )


def _check_same_scale(reference, unlabelled, modality: str) -> None:
    """Refuse unlabelled cells whose values are not of the reference's kind (counts or log-normalised)."""
    where = "the unlabelled cells' (the query's) expression matrix"
    check_finite_nonnegative(unlabelled, where=where)
    if modality != "rna":
        return
    has_values = unlabelled.nnz if sparse.issparse(unlabelled) else np.count_nonzero(unlabelled)
    if unlabelled.shape[0] and has_values:
        reference_is_log = detect_input_kind(reference, where="the reference's expression matrix")
        detect_input_kind(unlabelled, is_log_normalized=reference_is_log, where=where)


def _with_unlabelled(
    view: ad.AnnData,
    unlabelled: ad.AnnData,
    labels_key: str,
    layer: str | None,
    modality: str,
    setup_kwargs: dict | None = None,
) -> ad.AnnData:
    """``view`` followed by ``unlabelled``'s cells, matched to ``view``'s features by name, label-less.

    Their label is ``setup_kwargs``' ``unlabeled_category``; the ``obs`` columns ``setup_kwargs``
    name (``batch_key``) come from ``unlabelled``'s own.
    """
    for arg, key in _obs_keys(setup_kwargs).items():
        if key not in unlabelled.obs.columns:
            raise ValueError(
                f"{arg}={key!r} is not a column of the unlabelled cells' (the query's) obs (columns: "
                f"{list(unlabelled.obs.columns)}): every cell needs one. Add it, e.g. `query.obs[{key!r}] = 'query'`."
            )
    if layer is not None and layer not in unlabelled.layers:
        raise ValueError(
            f"layer {layer!r} is not in the unlabelled cells' (the query's) layers "
            f"({list(unlabelled.layers.keys())}): they need their counts in the same layer as the reference."
        )
    names = peak_names(unlabelled) if modality == "atac" else None
    aligned, report = align_to_genes(unlabelled, view.var_names, layer=layer, names=names)
    top, bottom = (a.X if layer is None else a.layers[layer] for a in (view, aligned))
    _check_same_scale(top, bottom, modality)
    dtype = np.result_type(top.dtype, bottom.dtype)  # never cast the query's values down to the reference's
    if sparse.issparse(top) or sparse.issparse(bottom):
        matrix = sparse.vstack([sparse.csr_matrix(top, dtype=dtype), sparse.csr_matrix(bottom, dtype=dtype)], "csr")
    else:
        matrix = np.vstack([np.asarray(top, dtype=dtype), np.asarray(bottom, dtype=dtype)])
    no_label = np.full(aligned.n_obs, _unlabelled_category(setup_kwargs))
    labels = np.concatenate([view.obs[labels_key].astype(str).to_numpy(), no_label])
    obs = pd.DataFrame({labels_key: pd.Categorical(labels)}, index=view.obs_names.append(aligned.obs_names))
    for key in _obs_keys(setup_kwargs).values():
        if key != labels_key:
            both = np.concatenate([view.obs[key].astype(object).to_numpy(), _as_text(unlabelled.obs[key]).to_numpy()])
            obs[key] = pd.Categorical(both)
    logger.info(
        "Pre-training also on %d unlabelled cells (%.1f%% of the reference's features missing from them).",
        aligned.n_obs,
        100 * report.share_missing,
    )
    combined = ad.AnnData(
        X=matrix if layer is None else None,
        obs=obs,
        var=view.var.copy(),
        layers=None if layer is None else {layer: matrix},
    )
    if not combined.obs_names.is_unique:
        combined.obs_names_make_unique()
    return combined


def fit_annotator(
    reference: ad.AnnData,
    labels_key: str,
    *,
    unlabelled: ad.AnnData | None = None,
    query: ad.AnnData | None = None,
    layer: str | None = None,
    model_kwargs: dict | None = None,
    pretrain_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    pretrain: bool = True,
    modality: str = "rna",
    setup_kwargs: dict | None = None,
):
    """Pre-train on all cells of ``reference`` and fine-tune on its labelled cells.

    Cells whose label is NaN or ``"Unknown"`` (or ``setup_kwargs``' ``unlabeled_category``)
    are used for pre-training only, never taught as a type, and so are the cells of
    ``unlabelled`` (e.g. the query to annotate), whose genes (or peaks) are matched to
    ``reference``'s by name, missing ones counting as not expressed. ``modality``
    (``"rna"`` or ``"atac"``) and ``setup_kwargs`` (e.g. ``{"atac_values": "tfidf"}``) go to
    :meth:`~scrobust_sc.model.SCRobust.setup_anndata`. ``query``, cells the model is to
    annotate, is checked as the trained model will read it (its ``layer``, the genes it shares
    with ``reference``, the scale of its values) before any training: a query the model would
    refuse fails at once, with the same message, not after training. It is not trained on.

    Examples
    --------
    >>> model = fit_annotator(reference, "cell_type")  # doctest: +SKIP
    >>> model = fit_annotator(reference, "cell_type", query=query)  # doctest: +SKIP
    >>> model = fit_annotator(reference, "cell_type", unlabelled=query)  # doctest: +SKIP
    >>> atac_model = fit_annotator(atac_reference, "cell_type", modality="atac")  # doctest: +SKIP
    """
    from scrobust_sc.model import SCRobust

    if layer == X_LAYER and X_LAYER not in reference.layers:
        layer = None  # "X" reads X, as in annotate
    setup = {**(setup_kwargs or {}), "unlabeled_category": _unlabelled_category(setup_kwargs)}
    work = _training_view(reference, labels_key, layer, modality, setup)
    if unlabelled is not None:
        work = _with_unlabelled(work, unlabelled, labels_key, layer, modality, setup)
    if setup.get("batch_key") is not None:
        logger.warning(
            "batch_key=%r is recorded with the model, but scRobust's encoder does not condition on batches: no "
            "batch effect is corrected.",
            setup["batch_key"],
        )
    SCRobust.setup_anndata(work, layer=layer, labels_key=labels_key, modality=modality, **setup)
    model = SCRobust(work, **(model_kwargs or {}))
    if query is not None:
        # the checks the trained model runs on the query, before any training; a backed query on its
        # first cells, so that its matrix is not read whole
        model.align_query(query[: min(query.n_obs, QUERY_CHECK_CELLS)].to_memory() if query.isbacked else query)
    if pretrain:
        model.pretrain(**(pretrain_kwargs or {}))
        _stop_if_interrupted(model, "Pre-training")
    model.train(**(train_kwargs or {}))
    _stop_if_interrupted(model, "Fine-tuning")
    return model


def _stop_if_interrupted(model, stage: str) -> None:
    """Ctrl+C during a stage stops the one-call path (the model's own methods return instead)."""
    if model.interrupted_:
        raise KeyboardInterrupt(
            f"{stage} was interrupted (Ctrl+C): stopped before going on with a half-trained model. To keep a "
            "half-trained model, or to resume from a checkpoint, use the model's pretrain/train methods "
            "(docs/reliability.md, 'Interrupted training and resuming')."
        )


def write_annotation(
    target: ad.AnnData,
    proba: pd.DataFrame,
    *,
    key_added: str,
    unknown_threshold: float | None,
    allowed_labels: Sequence[str] | None,
    novelty: np.ndarray | None = None,
    novelty_threshold: float | None = None,
    cell_novelty: np.ndarray | None = None,
    without_input: np.ndarray | None = None,
) -> None:
    """Write labels, confidences and probabilities of ``proba`` into ``target``.

    ``novelty`` is the score compared with ``novelty_threshold``; ``cell_novelty``, when
    given, each cell's own score before it was read over neighbourhoods. Cells marked in
    ``without_input`` (no count in the model's genes) are ``"Unknown"`` whatever the
    thresholds: there is nothing to classify.
    """
    proba = restrict_labels(proba, allowed_labels)
    values = proba.to_numpy()
    confidence = values.max(axis=1)
    labels = proba.columns.to_numpy()[values.argmax(axis=1)].astype(object)
    if unknown_threshold is not None:
        labels[confidence < unknown_threshold] = UNKNOWN_LABEL
    novelty_columns = {
        f"{key_added}_novelty": novelty,
        f"{key_added}_cell_novelty": cell_novelty if novelty is not None else None,
    }
    for column, scores in novelty_columns.items():
        if scores is not None:
            target.obs[column] = np.asarray(scores).astype(np.float32)
        elif column in target.obs:  # an earlier run's scores would sit beside this run's labels
            del target.obs[column]
    if novelty is not None and novelty_threshold is not None:
        labels[novelty > novelty_threshold] = UNKNOWN_LABEL
    if without_input is not None:
        labels[np.asarray(without_input, bool)] = UNKNOWN_LABEL
    write_label_column(target, f"{key_added}_label", labels, [*proba.columns, UNKNOWN_LABEL])
    target.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    target.obsm[f"{key_added}_probabilities"] = values.astype(np.float32)


def annotate(
    adata: ad.AnnData,
    *,
    labels_key: str | None = None,
    model=None,
    reference: ad.AnnData | None = None,
    layer: str | None = None,
    unknown_threshold: float | None = DEFAULT_UNKNOWN_THRESHOLD,
    novelty_threshold: float | None = DEFAULT_NOVELTY_THRESHOLD,
    novelty_neighbors: int | None = DEFAULT_NOVELTY_NEIGHBORS,
    allowed_labels: Sequence[str] | None = None,
    key_added: str = DEFAULT_KEY,
    embedding_key: str | None = EMBEDDING_KEY,
    max_epochs: int | None = None,
    pretrain_steps: int | None = None,
    pretrain_on_query: bool = False,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    pretrain_kwargs: dict | None = None,
    modality: str | None = None,
    setup_kwargs: dict | None = None,
    gene_symbols: str | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Annotate cell types with scRobust in one call.

    Three ways in:

    * ``labels_key`` only: the labelled cells of ``adata`` (non-NaN, not ``"Unknown"``)
      teach the model; every cell of ``adata`` is pre-trained on and annotated.
    * ``reference`` and ``labels_key``: a model is trained on ``reference`` and annotates
      ``adata``, whose genes are matched by name.
    * ``model``: a trained model (e.g. ``SCRobust.load(...)``) annotates ``adata``.

    Writes ``obs[f"{key_added}_label"]`` (categorical of text whose categories are the
    labels some cell received, so numeric or boolean labels come back as ``"3"`` or
    ``"True"``: compare with ``obs[labels_key].astype(str)``;
    ``"Unknown"`` where the confidence is below ``unknown_threshold`` or the novelty above
    ``novelty_threshold``, and always for a cell without a count in the model's genes),
    ``obs[f"{key_added}_novelty"]`` (the novelty the threshold reads),
    ``obs[f"{key_added}_cell_novelty"]`` (each cell's own, when ``novelty_neighbors`` is
    used), ``obs[f"{key_added}_confidence"]`` (largest class
    probability), ``obsm[f"{key_added}_probabilities"]`` (cells x types, columns in
    ``uns[key_added]["cell_types"]``), ``obsm[embedding_key]`` and ``uns[key_added]``
    (parameters, how the embedding was computed, and the gene-matching report; a
    ``tl.embed`` record there is dropped when it describes ``obsm[embedding_key]``) and,
    when some cell is ``"Unknown"`` and no colours are stored for the same categories,
    ``uns[f"{key_added}_label_colors"]`` (scanpy's default colours, ``"Unknown"`` light grey).

    Parameters
    ----------
    adata
        Cells to annotate (raw counts in ``X`` or ``layer``).
    labels_key
        ``obs`` column of known cell types (in ``reference`` when given, else in ``adata``).
    model
        A fine-tuned :class:`~scrobust_sc.model.SCRobust`; nothing is trained.
    reference
        Labelled AnnData to learn from (not with ``model``).
    layer
        Layer with the counts, in ``adata`` and ``reference``; ``"X"`` reads ``X``. With
        ``model``, the layer of ``adata`` that holds its counts, whichever layer the model was
        set up with (``None``: where the model reads them, ``X`` unless it was set up on a
        layer, which ``adata`` must then hold); ``"X"`` reads ``adata.X``, e.g. a fresh query
        for a model set up on ``layers["counts"]``. The scale check (counts or log-normalised,
        as the model's reference) applies to what is read.
    unknown_threshold
        Confidence under which a cell is ``"Unknown"``; ``None`` never rejects.
    novelty_threshold
        Novelty (see :meth:`~scrobust_sc.model.SCRobust.predict_novelty`) above which a cell
        is ``"Unknown"``: at the default 1, its logits are lower than those of all but 1% of
        the validation cells, or it lies farther from the reference cells of its predicted
        type than 1.2 times the distance 95% of them lie from each other. ``None`` never
        rejects on novelty. When more than a fifth of the cells are called ``"Unknown"``, a
        warning says so (``UNKNOWN_SHARE_WARNING``): a query from another platform can
        look novel as a whole, and the warning gives the query's median novelty when it
        is above the threshold.
    novelty_neighbors
        The novelty compared with ``novelty_threshold`` is the median of the cell's own
        and its nearest cells' in ``adata`` (this many cells, the cell included), in the
        PCA of ``adata``'s own log-normalised expression (2,000 most variable genes, 30
        components). Cells of a type missing from the labels come as a population and
        stay novel; a lone known cell in the tail does not, nor a query that another
        platform shifts as a whole, unless the shift carries its median over the threshold.
        Measured in ``docs/benchmarks.md`` ("Unknown" over neighbourhoods). ``None``: each
        cell's own novelty, as with fewer than 10 times this many cells in ``adata``. Used
        for RNA; peaks use each cell's own, which caught more held-out types on scATAC than
        neighbourhoods in the peaks' LSI did (``docs/benchmarks.md``, "scATAC-seq: held-out
        types").
    allowed_labels
        Restrict the predictions to these cell types.
    key_added
        Prefix of the written keys.
    embedding_key
        ``obsm`` key for the embedding; ``None`` skips it.
    max_epochs
        Fine-tuning epochs; ``None`` (default): 20, or more on a reference too small to
        give 500 optimiser steps in 20 (:meth:`~scrobust_sc.model.SCRobust.train`).
    pretrain_steps
        Pre-training optimiser steps (default of :meth:`~scrobust_sc.model.SCRobust.pretrain`);
        0 skips pre-training.
    pretrain_on_query
        With ``reference``: pre-train on ``adata``'s cells too (without labels, genes matched
        by name), as the ``labels_key``-only path pre-trains on a dataset's unlabelled
        cells; fine-tuning still reads ``reference``'s labels only. Measured in 5-fold CV
        with the test folds pre-trained on this way: macro-F1 within the spread of folds and
        seeds (``docs/design.md``); cells of types missing from the labels called
        "Unknown" far more often (each cell's own novelty: xin 0.69 -> 0.94, baron 0.75 ->
        0.93, bastidas 0.08 -> 0.31; ``docs/benchmarks.md``). Across platforms (CellBench, CEL-seq2 -> Drop-seq)
        the types stay right but 42% of the query is called "Unknown" (56% pre-trained on the
        reference alone, 3% without pre-training).
    model_kwargs, train_kwargs, pretrain_kwargs
        Passed to the model, :meth:`~scrobust_sc.model.SCRobust.train` and
        :meth:`~scrobust_sc.model.SCRobust.pretrain`.
    modality
        ``"rna"`` (the default when a model is trained) or ``"atac"`` (peaks; see
        :meth:`~scrobust_sc.model.SCRobust.setup_anndata`). With ``model``, it must match the
        model's own modality, if given.
    setup_kwargs
        Other arguments of :meth:`~scrobust_sc.model.SCRobust.setup_anndata` when a model is
        trained, e.g. ``{"atac_values": "tfidf"}``. ``unlabeled_category`` marks more unlabelled
        cells (NaN and ``"Unknown"`` are always unlabelled); ``batch_key`` is recorded with the
        model, but the encoder does not condition on batches (logged).
    gene_symbols
        ``var`` column of ``adata`` whose names match the model's genes (e.g. symbols, with
        Ensembl IDs in ``var_names``); default: ``var_names``, or the column the model was set
        up with where ``adata`` has it. With ``labels_key`` alone it is the set-up's
        ``gene_symbols`` (unless ``setup_kwargs`` names one); a ``reference``'s column goes in
        ``setup_kwargs``. A backed ``adata`` is then read into memory.
    copy
        Return an annotated copy instead of writing into ``adata`` (not for a backed
        ``adata``, which is annotated in place: its ``obs``, ``obsm`` and ``uns`` are in memory).

    Returns
    -------
    ``None``, or the annotated copy when ``copy=True``. The trained model is in
    ``uns[key_added]`` only by its parameters; use :func:`fit_annotator` to keep it.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> adata = scrobust.data.pbmc_demo()
    >>> scrobust.tl.annotate(adata, labels_key="cell_type")  # doctest: +SKIP
    >>> adata.obs["scrobust_label"].value_counts()  # doctest: +SKIP
    >>> scrobust.tl.annotate(atac_query, reference=atac_ref, labels_key="cell_type", modality="atac")  # doctest: +SKIP
    >>> scrobust.tl.annotate(query, reference=ref, labels_key="cell_type", pretrain_on_query=True)  # doctest: +SKIP
    >>> scrobust.tl.annotate(ensembl_query, model=model, gene_symbols="gene_symbols")  # doctest: +SKIP
    """
    whole = isinstance(novelty_neighbors, (int, np.integer)) and not isinstance(novelty_neighbors, bool)
    if novelty_neighbors is not None and (not whole or novelty_neighbors < 1):
        raise ValueError(
            f"novelty_neighbors must be a whole number of cells (at least 1) or None, not {novelty_neighbors!r}."
        )
    if pretrain_on_query and (model is not None or reference is None):
        raise ValueError(
            "pretrain_on_query applies with reference= (a model is trained on the reference); without a reference "
            "every cell of adata is already pre-trained on, and a given model= is not trained again."
        )
    if pretrain_on_query and pretrain_steps == 0:
        raise ValueError("pretrain_on_query needs pre-training: pretrain_steps=0 skips it; leave it at None or > 0.")
    if model is not None and reference is not None:
        raise ValueError(
            "Pass model= or reference=, not both: a given model is not trained again, so the reference would be "
            "ignored."
        )
    check_copy_of_backed(adata, copy)
    if gene_symbols is not None:
        query_gene_names(adata, gene_symbols)  # a column that is not there is refused before any training
    if model is not None and modality is not None and modality != model.modality:
        raise ValueError(f"modality={modality!r} but the model was trained on {model.modality!r} data.")
    if model is None:
        if labels_key is None:
            raise ValueError("Pass labels_key= (with or without reference=), or a trained model=.")
        source = reference if reference is not None else adata
        if reference is None and gene_symbols is not None:
            setup_kwargs = {"gene_symbols": gene_symbols, **(setup_kwargs or {})}
        unlabelled = adata if pretrain_on_query else None
        checked = adata if gene_symbols is None else _named_by(adata, gene_symbols)
        if unlabelled is not None:
            unlabelled = checked
        pre = dict(pretrain_kwargs or {})
        if pretrain_steps is not None and pretrain_steps > 0:
            pre.setdefault("max_steps", pretrain_steps)
        train = {"max_epochs": max_epochs, **(train_kwargs or {})}
        model = fit_annotator(
            source,
            labels_key,
            unlabelled=unlabelled,
            query=checked if reference is not None and not pretrain_on_query else None,
            layer=layer,
            model_kwargs=model_kwargs,
            pretrain_kwargs=pre,
            train_kwargs=train,
            pretrain=pretrain_steps != 0,
            modality=modality or "rna",
            setup_kwargs=setup_kwargs,
        )
        query = model.adata if reference is None else adata
        counts_of_query = adata
    else:
        query = counts_of_query = _query_in_models_layer(adata, model, layer)
    if gene_symbols is not None and query is not model.adata:
        query = model.align_query(query, gene_symbols=gene_symbols)[0]  # its report: model.last_alignment_
    if model.module.classifier is None or not getattr(model, "is_fine_tuned_", False):
        raise ValueError("The model is not fine-tuned for cell types: train it with labels (`model.train`).")
    proba, novelty, without_input = model._classify_cells(query, None, 256, with_empty=True)
    if without_input.any():
        logger.info(
            "%d cells have no count in the model's genes (or peaks): called %r. Empty droplets, or a panel "
            "that shares too few genes with the model.",
            int(without_input.sum()),
            UNKNOWN_LABEL,
        )
    cell_novelty = None
    if not model.module.has_novelty_reference:
        logger.warning(
            "This model holds no novelty reference (saved by an earlier release, before novelty existed): no cell "
            "can be called %r for its novelty, and obs[%r] is NaN. Fine-tune it again to score novelty.",
            UNKNOWN_LABEL,
            f"{key_added}_novelty",
        )
        novelty = np.full(len(novelty), np.nan)
        novelty_neighbors = None
    smoothed = novelty_over_neighbourhoods(model, counts_of_query, novelty, novelty_neighbors)
    if smoothed is not None:
        cell_novelty, novelty = novelty, smoothed
    report = getattr(model, "last_alignment_", None) if query is not model.adata else None
    target = adata.copy() if copy else adata
    write_annotation(
        target,
        proba,
        key_added=key_added,
        unknown_threshold=unknown_threshold,
        allowed_labels=allowed_labels,
        novelty=novelty,
        novelty_threshold=novelty_threshold,
        cell_novelty=cell_novelty,
        without_input=without_input,
    )
    if embedding_key is not None:
        target.obsm[embedding_key] = model.get_latent_representation(query, **ANNOTATION_EMBEDDING)
    earlier = target.uns.get(key_added)
    kept = {k: v for k, v in earlier.items() if k not in ANNOTATION_UNS_KEYS} if isinstance(earlier, dict) else {}
    if embedding_key is not None and _embedded_into(kept.get("embed")) == embedding_key:
        del kept["embed"]  # tl.embed's record describes an embedding this call replaced
    target.uns[key_added] = {
        **kept,
        "params": {
            "labels_key": labels_key,
            "modality": model.modality,
            "unknown_threshold": unknown_threshold,
            "novelty_threshold": novelty_threshold,
            "novelty_neighbors": novelty_neighbors if cell_novelty is not None else None,
            "allowed_labels": list(allowed_labels) if allowed_labels is not None else None,
            "layer": layer,
            "embedding_key": embedding_key,
            "embedding": dict(ANNOTATION_EMBEDDING) if embedding_key is not None else None,
            "pretrain_on_query": bool(pretrain_on_query),
            "gene_symbols": gene_symbols,
            "train": {k: v for k, v in model.train_params_.get("train", {}).items() if v is not None},
        },
        "cell_types": list(proba.columns if allowed_labels is None else allowed_labels),
    }
    if report is not None:
        target.uns[key_added]["gene_alignment"] = dict(report)
    n_unknown = int((target.obs[f"{key_added}_label"] == UNKNOWN_LABEL).sum())
    logger.info("Annotated %d cells; %d called %r.", target.n_obs, n_unknown, UNKNOWN_LABEL)
    if target.n_obs and n_unknown / target.n_obs > UNKNOWN_SHARE_WARNING:
        logger.warning(
            "%.0f%% of the %d cells were called %r. Expected for cell types missing from the labels; but cells "
            "from another platform or batch than the reference can look novel as a whole although their types "
            "are right. Check obs[%r] and the probabilities, or pass novelty_threshold=None (or a higher value) "
            "to call Unknown on the probability rule alone.%s",
            100 * n_unknown / target.n_obs,
            target.n_obs,
            UNKNOWN_LABEL,
            f"{key_added}_novelty",
            _whole_query_shift(novelty, novelty_threshold),
        )
    return target if copy else None
