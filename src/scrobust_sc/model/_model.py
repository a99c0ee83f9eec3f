"""The user-facing model class: AnnData in, embeddings and cell types out."""

from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data._constants import _SCVI_UUID_KEY, _SETUP_ARGS_KEY
from scvi.data.fields import CategoricalObsField, LabelsWithUnlabeledObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass

from scrobust_sc._constants import GENE_SELECTIONS, UNKNOWN_LABEL
from scrobust_sc.data._alignment import align_to_genes, missing_layer_error, query_gene_names
from scrobust_sc.data._atac import (
    ATAC_VALUES,
    MODALITIES,
    atac_moments,
    check_atac_values,
    inverse_document_frequency,
)
from scrobust_sc.data._memory import check_dense_budget
from scrobust_sc.data._peaks import peak_names
from scrobust_sc.data._ranking import (
    dispersion,
    expressed_fraction,
    inverse_std,
    log_normalized_block,
    log_normalized_moments,
    normalized_moments,
    seurat_dispersion,
    top_genes_mask,
)
from scrobust_sc.data._splits import class_weights, stratified_validation_split
from scrobust_sc.data._validation import (
    check_finite_nonnegative,
    check_gene_names,
    check_whole_number,
    detect_input_kind,
    sampled_rows,
)
from scrobust_sc.model._linear_expert import expert_rows, fit_linear_expert
from scrobust_sc.model._linear_genes import AUTO_LINEAR_HVGS, MAX_CHOICE_CELLS, choice_rows, choose_linear_genes
from scrobust_sc.module import SCRobustModule, default_view_size
from scrobust_sc.train import (
    ClassifierPlan,
    InterruptRecorder,
    KNNMonitor,
    PretrainingPlan,
    SafeCheckpointIO,
    StageRunner,
    knn_sample,
    prepare_checkpointing,
)

from ._io import load_model_files, save_model_files

logger = logging.getLogger("scrobust_sc")

#: Encoder sizes. ``"cpu"`` trains in minutes on a laptop; ``"paper"`` is the published model.
PRESETS: dict[str, dict] = {
    "cpu": {"d_model": 128, "n_heads": 4, "n_layers": 1},
    "paper": {"d_model": 512, "n_heads": 8, "n_layers": 1},
}
#: Optimiser steps of pre-training when neither ``max_epochs`` nor ``max_steps`` is given.
DEFAULT_PRETRAIN_STEPS = 2000
#: Fine-tuning epochs when ``train(max_epochs=None)``, unless :data:`MIN_FINETUNE_STEPS` asks for more
DEFAULT_FINETUNE_EPOCHS = 20
#: Fewest optimiser steps of fine-tuning when ``train(max_epochs=None)``: a reference of a few
#: hundred labelled cells takes a handful of steps an epoch, and 20 epochs under-train it
#: (``docs/design.md``, "Fine-tuning budget")
MIN_FINETUNE_STEPS = 500
#: Cells read from disk at a time when embedding or predicting a backed AnnData
BACKED_CHUNK_CELLS = 8192
#: Fewest validation cells the energy novelty is calibrated on; with fewer, it is left out.
MIN_ENERGY_CELLS = 20


def cell_positions(indices, n_cells: int) -> np.ndarray | None:
    """``indices`` as integer positions: a boolean mask of ``n_cells`` entries becomes its ``True`` positions.

    Examples
    --------
    >>> cell_positions(np.array([True, False, True]), 3).tolist()
    [0, 2]
    >>> cell_positions([2, 0], 3).tolist()
    [2, 0]
    """
    if indices is None:
        return None
    array = np.asarray(indices).ravel()
    if array.dtype == bool:
        if array.size != n_cells:
            raise ValueError(f"indices is a boolean mask of {array.size} entries for {n_cells} cells.")
        return np.flatnonzero(array)
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"indices must be cell positions (integers) or a boolean mask, not dtype {array.dtype}.")
    return array


def _resolve_keep_best(keep_best, train_codes: np.ndarray, val_codes: np.ndarray, cell_types) -> bool:
    """``keep_best`` as a bool: ``"auto"`` is ``True`` only if validation holds every training type."""
    if isinstance(keep_best, bool):
        return keep_best
    if keep_best != "auto":
        raise ValueError(f"keep_best must be True, False or 'auto', not {keep_best!r}.")
    unseen = np.setdiff1d(np.unique(train_codes), np.unique(val_codes))
    if val_codes.size and unseen.size == 0:
        return True
    if val_codes.size:
        names = ", ".join(str(cell_types[c]) for c in unseen[:5])
        logger.info(
            "Keeping the last epoch: the validation split lacks %d type(s) (%s%s) too rare to hold out, "
            "so the best validation epoch would ignore them. Pass keep_best=True to choose it anyway.",
            unseen.size,
            names,
            ", ..." if unseen.size > 5 else "",
        )
    return False


def finetune_epochs(n_cells: int, batch_size: int, *, drop_last: bool) -> int:
    """Default fine-tuning epochs: :data:`DEFAULT_FINETUNE_EPOCHS`, or enough for :data:`MIN_FINETUNE_STEPS`.

    Examples
    --------
    >>> finetune_epochs(3000, 32, drop_last=True)
    20
    >>> finetune_epochs(300, 32, drop_last=True)  # 9 steps an epoch
    56
    """
    steps_per_epoch = max(1, n_cells // batch_size if drop_last else math.ceil(n_cells / batch_size))
    return max(DEFAULT_FINETUNE_EPOCHS, math.ceil(MIN_FINETUNE_STEPS / steps_per_epoch))


def _check_text_column(adata: ad.AnnData, key: str | None, what: str) -> None:
    """Refuse an ``obs`` column of numbers or booleans as labels or batches (scvi-tools maps text)."""
    if key is None:
        return
    column = adata.obs[key]
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        raise ValueError(
            f"adata.obs[{key!r}] holds {values.dtype} values, but {what} must be text: convert the column, e.g. "
            f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)` (`scrobust.tl.annotate` does this itself)."
        )


def _registration_copy(adata: ad.AnnData) -> ad.AnnData:
    """A new AnnData sharing ``adata``'s matrices, with its own ``obs``, ``var`` and ``uns``.

    scvi-tools' registration writes into ``obs`` and ``uns``; registering this copy leaves
    the user's AnnData as it was without copying its counts.
    """
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        layers={k: adata.layers[k] for k in adata.layers},
        uns=dict(adata.uns),
    )


def _backed_view_in_file(view: ad.AnnData) -> tuple[ad.AnnData, np.ndarray, np.ndarray | None]:
    """The backed file under a view, the view's rows in it, and its genes (``None``: all, in order)."""
    whole = ad.read_h5ad(view.filename, backed="r")
    if not whole.obs_names.is_unique or not whole.var_names.is_unique:
        raise ValueError(
            f"{view.filename} has repeated cell or gene names, so a subset of it cannot be read back from "
            "the file. Load the subset into memory (`adata[...].to_memory()`) or make the names unique "
            "(`adata.obs_names_make_unique()`) before writing the file."
        )
    rows = whole.obs_names.get_indexer(view.obs_names)
    genes = None if view.var_names.equals(whole.var_names) else whole.var_names.get_indexer(view.var_names)
    return whole, rows, genes


def restrict_labels(proba: pd.DataFrame, allowed_labels: Sequence[str] | None) -> pd.DataFrame:
    """Keep the columns of ``allowed_labels`` and renormalise each row (``None``: unchanged).

    Examples
    --------
    >>> p = pd.DataFrame({"a": [0.5], "b": [0.25], "c": [0.25]})
    >>> restrict_labels(p, ["a", "b"]).round(3).to_dict("list")
    {'a': [0.667], 'b': [0.333]}
    """
    if allowed_labels is None:
        return proba
    if isinstance(allowed_labels, str):
        raise ValueError(f"allowed_labels must be a list of cell types, not a string: pass [{allowed_labels!r}].")
    if len(allowed_labels) == 0:
        raise ValueError("allowed_labels must name at least one cell type (or be None for all).")
    unknown = sorted(set(allowed_labels) - set(proba.columns))
    if unknown:
        raise ValueError(f"allowed_labels not among the model's cell types: {unknown}. Known: {list(proba.columns)}")
    proba = proba[list(allowed_labels)]
    return proba.div(proba.sum(axis=1).clip(lower=1e-12), axis=0)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _labels_state(registry: dict) -> dict:
    return registry["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]


class SCRobust(BaseModelClass):
    """scRobust: a Transformer over gene tokens scaled by expression.

    Pre-trained without labels (two random gene views per cell, contrastive loss plus
    expression prediction), then optionally fine-tuned for cell-type annotation.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Internal: a saved registry, used by :meth:`load` when no AnnData is given.
    preset
        ``"cpu"`` (d 128, 4 heads, 1 layer) or ``"paper"`` (d 512, 8 heads, 1 layer).
    d_model, n_heads, n_layers
        Override the preset's sizes.
    dropout
        Dropout rate of the encoder and heads.
    value_encoding
        ``"mlp"`` (default) adds a learned encoding of each expression value to its token so
        that values reach the cell embedding; ``"published"`` is the paper's token, which a
        pre-LayerNorm encoder makes blind to values.
    norm_first
        Pre-LayerNorm blocks (published) or post-LayerNorm.
    pooling
        ``"cls"``: the cell embedding is the CLS output (published). ``"cls_mean"`` adds a
        projection of the mean of the gene tokens entering the last layer.
    n_view_genes
        Genes per random view in pre-training; ``None``: 10% of the mean number of expressed
        genes per cell (scATAC: 50% of the accessible peaks), clipped to 32-128.
    temperature
        NT-Xent temperature.
    gene_linear_head
        Add a linear path to the cell-type classifier: a learned weight per gene and type
        times the value of each of the cell's input genes, summed beside the Transformer's
        output (on by default; ``False`` gives the published classifier).
    gene_linear_scaling
        Values the linear path reads: ``"none"`` (default) the ``log1p`` values;
        ``"standardized"`` divides each gene's value by its standard deviation over the
        training cells and clips at 10, as a logistic regression on scaled genes does. It
        finds types of a few cells better (baron_mouse1 macro-F1 0.74 -> 0.82) but
        amplifies genes seen in one or two cells, which costs accuracy on PBMC references
        (600 PBMCs: 0.80 -> 0.64; zheng_sorted fold 0: 0.81 -> 0.73); see ``docs/design.md``.
    gene_linear_hvgs
        Genes the linear path reads. An integer: only the training data's most highly
        variable genes (Seurat's normalised dispersion, as ``scanpy.pp.highly_variable_genes``
        with ``flavor="seurat"``; scATAC: the most variable peaks). ``None``: every gene.
        ``"auto"`` (default): the 2,000 HVGs when a logistic regression on them beats one on
        every gene by more than 0.01 validation macro-F1 on the labelled training cells
        (seconds; logged, kept in ``gene_linear_choice_``: ``"chosen"``, 2,000 or ``None``,
        and the two scores), else every gene; without labels,
        and for scATAC, every gene. It picks the HVGs on baron_mouse1 (macro-F1 0.74 -> 0.80)
        and every gene on the PBMC, lung and other pancreas references (``docs/design.md``).
    value_augmentation
        Strength of the random value rescaling of each pre-training view (0: off). It stops
        the encoder matching views by sequencing depth instead of cell identity.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> adata = scrobust.data.pbmc_demo()
    >>> scrobust.model.SCRobust.setup_anndata(adata)
    >>> model = scrobust.model.SCRobust(adata, d_model=32, n_heads=2)
    >>> model.pretrain(max_steps=2, batch_size=16)  # doctest: +SKIP
    """

    _module_cls = SCRobustModule
    _training_plan_cls = PretrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = StageRunner

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        *,
        preset: Literal["cpu", "paper"] = "cpu",
        d_model: int | None = None,
        n_heads: int | None = None,
        n_layers: int | None = None,
        dropout: float = 0.1,
        value_encoding: Literal["mlp", "published"] = "mlp",
        norm_first: bool = True,
        pooling: Literal["cls", "cls_mean"] = "cls",
        n_view_genes: int | None = None,
        temperature: float = 0.07,
        value_augmentation: float = 0.7,
        gene_linear_head: bool = True,
        gene_linear_scaling: Literal["standardized", "none"] = "none",
        gene_linear_hvgs: int | Literal["auto"] | None = "auto",
    ):
        super().__init__(adata, registry)
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, not {preset!r}.")
        sizes = {**PRESETS[preset]}
        for key, value in {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers}.items():
            if value is not None:
                sizes[key] = int(value)
        setup_args = self.registry_[_SETUP_ARGS_KEY]
        labels = _labels_state(self.registry_)
        if setup_args.get("labels_key") is None:
            self.cell_types_ = []
        else:
            self.cell_types_ = [str(c) for c in labels["categorical_mapping"] if c != labels["unlabeled_category"]]
        n_genes = int(self.summary_stats.n_vars)

        scores, idf = None, None
        self.gene_linear_choice_: dict = {}
        modality, atac_values = self.modality, setup_args.get("atac_values") or "binary"
        if adata is not None:
            counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            input_is_log = bool(setup_args["is_log_normalized"])
            fraction = expressed_fraction(counts)
            if modality == "atac":
                idf = inverse_document_frequency(counts) if atac_values == "tfidf" else None
                mean, var = atac_moments(counts, idf)
                self.gene_names_ = list(peak_names(adata, setup_args.get("gene_symbols")))
            else:
                mean, var = log_normalized_moments(counts, input_is_log=input_is_log)
                self.gene_names_ = list(query_gene_names(adata, setup_args.get("gene_symbols")))
            scores = (1.0 - fraction, dispersion(mean, var), inverse_std(var))
            gene_linear_hvgs, hvg_mask = self._linear_path_genes(
                gene_linear_hvgs if gene_linear_head else None, counts, scores[1], input_is_log, setup_args
            )
            scores = (*scores, hvg_mask)
            if n_view_genes is None:
                n_view_genes = default_view_size(float(fraction.sum()), share=0.5 if modality == "atac" else 0.1)
        if n_view_genes is None:
            raise ValueError("n_view_genes must be given when the model is built without AnnData.")
        if gene_linear_hvgs == "auto":  # nothing to choose from: no labels, no data, or a saved model
            gene_linear_hvgs = None

        self.module = self._module_cls(
            n_genes,
            n_labels=len(self.cell_types_) if setup_args.get("labels_key") is not None else 0,
            dropout=dropout,
            value_encoding=value_encoding,
            norm_first=norm_first,
            pooling=pooling,
            n_view_genes=int(n_view_genes),
            temperature=temperature,
            input_is_log=bool(setup_args["is_log_normalized"]),
            value_augmentation=value_augmentation,
            gene_linear_head=gene_linear_head,
            gene_linear_scaling=gene_linear_scaling,
            gene_linear_hvgs=gene_linear_hvgs,
            modality=modality,
            atac_values=atac_values,
            **sizes,
        )
        if scores is not None:
            self.module.unique_score.copy_(torch.as_tensor(scores[0], dtype=torch.float32))
            self.module.hvg_score.copy_(torch.as_tensor(scores[1], dtype=torch.float32))
            if hasattr(self.module, "gene_scale"):
                self.module.gene_scale.copy_(torch.as_tensor(scores[2], dtype=torch.float32))
            if hasattr(self.module, "gene_linear_mask"):
                self.module.gene_linear_mask.copy_(torch.as_tensor(scores[3], dtype=torch.float32))
        if idf is not None:
            self.module.idf.copy_(torch.as_tensor(idf, dtype=torch.float32))
        self.train_params_: dict = {}
        #: Whether the last ``pretrain`` or ``train`` was stopped by Ctrl+C (the model keeps its weights).
        self.interrupted_ = False
        self._model_summary_string = (
            f"SCRobust: d_model {sizes['d_model']}, {sizes['n_heads']} heads, {sizes['n_layers']} layer(s), "
            f"{n_genes} {'peaks' if modality == 'atac' else 'genes'}, views of {n_view_genes}, "
            f"value encoding {value_encoding!r}, modality {modality!r}, "
            f"{len(self.cell_types_)} cell types."
        )
        self.init_params_ = {
            "kwargs": {},
            "non_kwargs": {
                **sizes,
                "preset": preset,
                "dropout": dropout,
                "value_encoding": value_encoding,
                "norm_first": norm_first,
                "pooling": pooling,
                "n_view_genes": int(n_view_genes),
                "temperature": temperature,
                "value_augmentation": value_augmentation,
                "gene_linear_head": gene_linear_head,
                "gene_linear_scaling": gene_linear_scaling,
                "gene_linear_hvgs": gene_linear_hvgs,
            },
        }

    def _linear_path_genes(self, request, counts, peak_dispersion, input_is_log: bool, setup_args):
        """Resolve ``gene_linear_hvgs`` (``"auto"``: ask the labelled cells) and its gene mask."""
        if request is None or (request == "auto" and (setup_args.get("labels_key") is None or self.modality == "atac")):
            return None, None
        n_top = AUTO_LINEAR_HVGS if request == "auto" else int(request)
        if self.modality == "atac":
            variable = peak_dispersion  # peaks: dispersion of the model's values
        else:
            variable = seurat_dispersion(*normalized_moments(counts, input_is_log=input_is_log))
        mask = top_genes_mask(variable, n_top)
        if request != "auto":
            return n_top, mask
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        labelled = np.flatnonzero(codes < len(self.cell_types_))  # the unlabelled category comes last, as in train
        labelled = choice_rows(labelled)  # subset before copying: memory stays bounded
        cells = counts if labelled.size == counts.shape[0] else counts[labelled]
        x = log_normalized_block(cells, input_is_log=input_is_log)
        use_hvgs, scores = choose_linear_genes(x, np.asarray(self.cell_types_)[codes[labelled]], mask)
        self.gene_linear_choice_ = {"chosen": n_top if use_hvgs else None, **scores}
        logger.info(
            "Linear path: %s (validation macro-F1 of a logistic regression on every gene %s, on %d HVGs %s).",
            f"the {n_top} most variable genes" if use_hvgs else "every gene",
            _fmt(scores.get("all_genes")),
            n_top,
            _fmt(scores.get("hvgs")),
        )
        return (n_top, mask) if use_hvgs else (None, None)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols: str | None = None,
        is_log_normalized: bool | None = None,
        unlabeled_category: str = UNKNOWN_LABEL,
        modality: Literal["rna", "atac"] = "rna",
        atac_values: Literal["binary", "tfidf"] = "binary",
        **kwargs,
    ) -> None:
        """Register and validate an AnnData for scRobust.

        Raw counts are expected and normalised per cell (to 1e4, then ``log1p``) inside the
        model, one mini-batch at a time; log-normalised data are detected (non-integer values
        up to 30) and accepted with a logged note. Cells without any expressed gene are kept
        and embedded from the CLS token alone.

        Adds ``obs["_scvi_batch"]``, ``obs["_scvi_labels"]`` and ``uns["_scvi_uuid"]``,
        ``uns["_scvi_manager_uuid"]`` (the scvi-tools registration); nothing else changes.

        Parameters
        ----------
        adata
            Cells x genes.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        batch_key
            ``obs`` column of batches (recorded; the encoder does not condition on it).
        labels_key
            ``obs`` column of cell types, for fine-tuning. Cells labelled
            ``unlabeled_category`` are unlabelled; ``NaN`` is refused (mark such cells).
        gene_symbols
            ``var`` column whose values name the genes (the model's vocabulary); default
            ``var_names``.
        is_log_normalized
            ``None`` detects the scale; ``True`` or ``False`` asserts it (checked).
        unlabeled_category
            Label value of unlabelled cells. Cells labelled ``"Unknown"`` (the call for cells of
            no known type) are refused with any other value: they would be taught as a type.
        modality
            ``"rna"`` (default) or ``"atac"``: peaks (or bins) are the tokens, raw peak counts
            or 0/1 are expected and binarised (no per-cell normalisation or log of counts);
            peak names ``chr:start-end``, ``chr-start-end`` or ``chr_start_end`` in
            ``var_names`` (or ``gene_symbols``), else built from ``var`` columns
            ``chrom``/``start``/``end``. See :func:`scrobust_sc.data.peak_names`.
        atac_values
            For ATAC: ``"binary"`` (default, every accessible peak has the same value) or
            ``"tfidf"`` (TF-IDF per mini-batch, idf from this training data, saved with the model).
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Examples
        --------
        >>> import scrobust_sc as scrobust
        >>> adata = scrobust.data.pbmc_demo()
        >>> scrobust.model.SCRobust.setup_anndata(adata, labels_key="cell_type")
        >>> atac = anndata.read_h5ad("peaks.h5ad")  # doctest: +SKIP
        >>> scrobust.model.SCRobust.setup_anndata(atac, modality="atac", labels_key="cell_type")  # doctest: +SKIP
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}.")
        if atac_values not in ATAC_VALUES:
            raise ValueError(f"atac_values must be one of {ATAC_VALUES}, not {atac_values!r}.")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
        if adata.isbacked:
            raise ValueError(
                "Training needs the counts in memory: load with `sc.read_h5ad(path)` (not backed='r'). "
                "Embedding and prediction accept any AnnData with the model's genes."
            )
        matrix = adata.X if layer is None else adata.layers[layer] if layer in adata.layers else None
        if matrix is None:
            where = "adata.X is None" if layer is None else f"layer {layer!r} is not in adata.layers"
            raise ValueError(f"{where}: pass the layer that holds the counts with `layer=`.")
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        check_finite_nonnegative(matrix, where=where)
        if modality == "atac":
            if is_log_normalized:
                raise ValueError("is_log_normalized=True does not apply to scATAC: pass peak counts or 0/1.")
            check_atac_values(matrix, where=where)
            resolved = False
            check_gene_names(peak_names(adata, gene_symbols), where="the peak names", peaks=True)
        else:
            resolved = detect_input_kind(matrix, is_log_normalized=is_log_normalized, where=where)
            check_gene_names(query_gene_names(adata, gene_symbols), column=gene_symbols)
        for key in (batch_key, labels_key):
            if key is not None and key not in adata.obs.columns:
                raise ValueError(f"{key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
        _check_text_column(adata, labels_key, "labels")
        _check_text_column(adata, batch_key, "batches")
        if batch_key is not None and int(adata.obs[batch_key].isna().sum()):
            raise ValueError(
                f"adata.obs[{batch_key!r}] has {int(adata.obs[batch_key].isna().sum())} missing values: every cell "
                "needs a batch. Fill them, e.g. `adata.obs[key] = adata.obs[key].astype(object).fillna('unknown')`."
            )
        if labels_key is not None:
            n_missing = int(adata.obs[labels_key].isna().sum())
            if n_missing:
                raise ValueError(
                    f"adata.obs[{labels_key!r}] has {n_missing} missing labels (NaN). Mark unlabelled cells with "
                    f"{unlabeled_category!r} (e.g. `adata.obs[key] = adata.obs[key].astype(object)"
                    f".fillna({unlabeled_category!r})`), or use `scrobust.tl.annotate`, which does this itself."
                )
            n_unknown = int((adata.obs[labels_key].astype(object) == UNKNOWN_LABEL).sum())
            if n_unknown and str(unlabeled_category) != UNKNOWN_LABEL:
                raise ValueError(
                    f"adata.obs[{labels_key!r}] has {n_unknown} cells labelled {UNKNOWN_LABEL!r}, the call for cells "
                    f"of no known type; with unlabeled_category={unlabeled_category!r} they would be taught as a "
                    f"type. Pass unlabeled_category={UNKNOWN_LABEL!r} to leave them unlabelled, or relabel them."
                )
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category)
            if labels_key is not None
            else CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
        ]
        setup_method_args[_SETUP_ARGS_KEY]["is_log_normalized"] = resolved
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fewer than 3 cells.*")
            adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # --------------------------------------------------------------- queries
    @property
    def _setup_args(self) -> dict:
        return self.registry_[_SETUP_ARGS_KEY]

    @property
    def modality(self) -> str:
        """``"rna"`` or ``"atac"``, as registered (models saved before scATAC support: ``"rna"``)."""
        return self._setup_args.get("modality") or "rna"

    def _validate_anndata(
        self, adata: ad.AnnData | None = None, copy_if_view: bool = True, *, keep_labels: bool = False
    ) -> ad.AnnData:
        """Return an AnnData aligned to the model's genes and registered with its set-up.

        ``keep_labels``: keep ``adata``'s labels of the model's types (see :meth:`align_query`).
        Sets ``last_alignment_`` to the gene-matching report of ``adata`` (``None`` for the
        model's own AnnData).
        """
        if adata is None or adata is self.adata:
            if self.adata is None:
                raise ValueError("This model has no AnnData attached (it was loaded without one): pass `adata=`.")
            self.last_alignment_ = None
            self._check_own_scale()
            return super()._validate_anndata(adata, copy_if_view)
        if self._registered_here(adata):  # a query copy this model aligned: it carries its report
            self.last_alignment_ = adata.uns.get("scrobust_alignment")
            return super()._validate_anndata(adata, copy_if_view)
        if self._is_aligned(adata):  # the user's align_query result: registered on a light copy
            aligned = _registration_copy(adata)
            self.last_alignment_ = dict(adata.uns["scrobust_alignment"])
        else:
            aligned, report = self.align_query(adata, keep_labels=keep_labels)
            self.last_alignment_ = report.as_dict()
        self._forget_queries()  # scvi-tools' registry keeps every registered AnnData alive
        return super()._validate_anndata(aligned, copy_if_view)

    def _check_own_scale(self) -> None:
        """Refuse the model's own AnnData when its counts (or log values) were changed in place since set-up.

        Reads evenly spaced rows (about :data:`~scrobust_sc.data._validation.N_VALUES_CHECKED`
        values), so that the check stays cheap on every call; a query gets the same check in
        :meth:`align_query`.
        """
        declared = self._setup_args.get("is_log_normalized")
        if self.modality != "rna" or declared is None:
            return
        layer = self._setup_args.get("layer")
        matrix = self.adata.X if layer is None else self.adata.layers[layer] if layer in self.adata.layers else None
        if matrix is None:
            return
        sample = sampled_rows(matrix)
        if not (sample.nnz if sparse.issparse(sample) else np.count_nonzero(sample)):
            return
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        kind = "log-normalised values" if declared else "raw counts"
        try:
            check_finite_nonnegative(sample, where=where)
            detect_input_kind(sample, is_log_normalized=declared, where=where)
        except ValueError as err:
            raise ValueError(
                f"{where} of the AnnData this model was set up with no longer holds {kind}: it was changed in place "
                "since `setup_anndata` (e.g. by `sc.pp.normalize_total` and `sc.pp.log1p`), and the model would "
                f"misread it ({str(err).split('. ')[0]}). Put them back in {where}, or pass a copy of the cells "
                f"that holds them there; a fine-tuned model can also read them from a layer that holds them: "
                "`scrobust.tl.annotate(adata, model=model, layer='counts')`. Before normalising in place, keep "
                "them in a layer: `adata.layers['counts'] = adata.X.copy()`."
            ) from None

    def _registered_here(self, adata: ad.AnnData) -> bool:
        """Whether ``adata`` is itself a query copy this model registered (and has not forgotten yet).

        By identity: a user's copy of a registered AnnData carries its identifier too.
        """
        manager = self._per_instance_manager_store.get(self.id, {}).get(adata.uns.get(_SCVI_UUID_KEY))
        return manager is not None and manager.adata is adata

    def _is_aligned(self, adata: ad.AnnData) -> bool:
        """Whether ``adata`` was made by :meth:`align_query` for this model's genes."""
        return "scrobust_alignment" in adata.uns and adata.var_names.equals(pd.Index(self.gene_names_))

    def align_query(self, adata: ad.AnnData, gene_symbols: str | None = None, *, keep_labels: bool = False):
        """A new AnnData with ``adata``'s cells over the model's genes, plus a report.

        Genes are matched by name (``var_names``, or the ``var`` column ``gene_symbols``,
        defaulting to the one used at set-up), reordered, and missing genes count as not
        expressed. The user's AnnData is not modified. Its cells are unlabelled, unless
        ``keep_labels`` (as :meth:`load` does with ``adata=``, to train further): then the
        labels of the model's cell types are kept, and others are unlabelled.

        Examples
        --------
        >>> aligned, report = model.align_query(query)  # doctest: +SKIP
        >>> report.share_missing  # doctest: +SKIP
        0.25
        """
        layer = self._setup_args.get("layer")
        if layer is not None and layer not in adata.layers:
            raise missing_layer_error(layer, adata.layers.keys())
        symbols = gene_symbols  # a column named here must exist (refused by name otherwise)
        if symbols is None and self._setup_args.get("gene_symbols") in adata.var.columns:
            symbols = self._setup_args["gene_symbols"]  # the set-up's column, where the query has it
        names = peak_names(adata, symbols) if self.modality == "atac" else None
        aligned, report = align_to_genes(
            adata, pd.Index(self.gene_names_), layer=layer, gene_symbols=symbols, names=names
        )
        matrix = aligned.X if layer is None else aligned.layers[layer]
        check_finite_nonnegative(matrix, where="the query's expression matrix")
        if matrix.shape[0] and (matrix.nnz if hasattr(matrix, "nnz") else np.count_nonzero(matrix)):
            if self.modality == "atac":
                check_atac_values(matrix, where="the query's peak matrix")
            else:
                detect_input_kind(
                    matrix,
                    is_log_normalized=self._setup_args["is_log_normalized"],
                    where="the query's expression matrix",
                )
        if self._setup_args.get("gene_symbols") is not None:
            aligned.var[self._setup_args["gene_symbols"]] = aligned.var_names
        labels_key = self._setup_args.get("labels_key")
        if labels_key is not None:
            aligned.obs[labels_key] = self._labels_to_keep(adata, labels_key) if keep_labels else self._unlabelled
        batch_key = self._setup_args.get("batch_key")
        if batch_key is not None:
            batch = self.registry_["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
            aligned.obs[batch_key] = batch["categorical_mapping"][0]
        aligned.uns["scrobust_alignment"] = report.as_dict()
        return aligned, report

    @property
    def _unlabelled(self) -> str:
        return _labels_state(self.registry_)["unlabeled_category"]

    def _labels_to_keep(self, adata: ad.AnnData, labels_key: str) -> np.ndarray:
        """``adata``'s labels of the model's cell types; every other cell unlabelled (logged)."""
        if labels_key not in adata.obs.columns:
            return np.full(adata.n_obs, self._unlabelled, dtype=object)
        given = adata.obs[labels_key].astype(object)
        known = given.isin(list(self.cell_types_)).to_numpy()
        other = int((~known & given.notna().to_numpy() & (given != self._unlabelled).to_numpy()).sum())
        if other:
            logger.warning(
                "%d cells of adata.obs[%r] carry labels that are not among the model's cell types %s; they are "
                "left unlabelled (the classifier's types are fixed when it is created).",
                other,
                labels_key,
                list(self.cell_types_),
            )
        return np.where(known, given.astype(str).to_numpy(), self._unlabelled).astype(object)

    # --------------------------------------------------------------- training
    def _fit(
        self,
        plan,
        indices: Sequence[np.ndarray] | None,
        *,
        max_epochs: int,
        batch_size: int,
        validation_size: float,
        drop_last: bool,
        accelerator,
        devices,
        datasplitter_kwargs,
        trainer_kwargs,
        monitor: str,
        stage: str,
        run_settings: dict,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ):
        splitter_kwargs = {
            "batch_size": batch_size,
            "drop_last": drop_last,
            # under DDP each process must load its own share of every batch: scvi-tools' sampler, by its own rule
            "distributed_sampler": use_distributed_sampler(trainer_kwargs.get("strategy")),
            **(datasplitter_kwargs or {}),
        }
        if indices is None:
            splitter = self._data_splitter_cls(
                self.adata_manager,
                train_size=1.0 - validation_size if validation_size else 1.0,
                validation_size=validation_size or None,
                **splitter_kwargs,
            )
        else:
            splitter = self._data_splitter_cls(self.adata_manager, external_indexing=list(indices), **splitter_kwargs)
        trainer_kwargs = dict(trainer_kwargs)
        if indices is None:  # scvi-tools' splitter rounds the validation share down
            no_validation = math.floor(validation_size * self.adata.n_obs) == 0 if validation_size else True
            if no_validation and validation_size:
                logger.info(
                    "%d cells are too few for a validation share of %s: training without validation.",
                    self.adata.n_obs,
                    validation_size,
                )
        else:
            no_validation = len(indices[1]) == 0
        if no_validation:  # the splitter gives no validation loader: Lightning must not ask for one
            trainer_kwargs.update(limit_val_batches=0, num_sanity_val_steps=0)
        trainer_kwargs.setdefault("early_stopping", False)
        trainer_kwargs.setdefault("early_stopping_monitor", monitor)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        trainer_kwargs.setdefault("log_every_n_steps", 1)
        if settings.num_threads is not None:
            torch.set_num_threads(settings.num_threads)
        interrupt = InterruptRecorder()
        self.interrupted_ = False
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), interrupt]
        if checkpoint_dir is not None or resume:
            model_settings = {**self.init_params_.get("non_kwargs", {}), **self.init_params_.get("kwargs", {})}
            run_settings = {**run_settings, **{f"model.{k}": v for k, v in model_settings.items()}}
            saver, ckpt_path = prepare_checkpointing(
                self, checkpoint_dir, resume=resume, stage=stage, run_settings=run_settings
            )
            trainer_kwargs["callbacks"].append(saver)
            trainer_kwargs["plugins"] = [*(trainer_kwargs.get("plugins") or []), SafeCheckpointIO()]
            if ckpt_path is not None:
                trainer_kwargs["ckpt_path"] = ckpt_path
        sigint_handler = signal.getsignal(signal.SIGINT)
        self.module.train()
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )
        try:
            with warnings.catch_warnings():
                # Lightning (2.6) builds torch's deprecated LeafSpec; nothing a user can act on
                warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
                runner()
        except SystemExit:
            # Lightning turns Ctrl+C into sys.exit(1); keep the model and the session alive instead
            if interrupt.epoch is None:
                raise
            self.module.eval()
            self.is_trained_ = True
            self.interrupted_ = True
            logger.warning(
                "Training interrupted (Ctrl+C) during epoch %d: the model keeps %s.",
                interrupt.epoch + 1,
                "the weights of the best validation epoch" if getattr(plan, "keep_best", False) else "its last weights",
            )
        finally:
            signal.signal(signal.SIGINT, sigint_handler)  # Lightning leaves Ctrl+C ignored

    def _knn_monitor(self, request: bool | None) -> KNNMonitor | None:
        """The pre-training's :class:`~scrobust_sc.train.KNNMonitor` on the registered labels, if any."""
        if request is False:
            return None
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        labelled = np.flatnonzero(codes < len(self.cell_types_)) if self.cell_types_ else np.zeros(0, dtype=int)
        cells = labelled[knn_sample(codes[labelled], seed=settings.seed or 0)]
        if cells.size == 0:
            if request:
                raise ValueError(
                    "knn_monitor=True needs labels of at least 2 cell types with 5 cells each: register them with "
                    "`SCRobust.setup_anndata(adata, labels_key=...)`, or pass knn_monitor=None."
                )
            return None
        return KNNMonitor(lambda: self.get_latent_representation(indices=cells), codes[cells])

    def _batch_size_for(self, n_cells: int, batch_size: int, minimum: int = 2) -> int:
        check_whole_number(batch_size, "batch_size", minimum)
        if n_cells < minimum:
            raise ValueError(f"Training needs at least {minimum} cells, got {n_cells}.")
        if batch_size > n_cells:
            logger.info("batch_size %d is larger than the %d training cells: using %d.", batch_size, n_cells, n_cells)
            batch_size = n_cells
        self._check_batch_budget(batch_size)
        return batch_size

    def pretrain(
        self,
        max_epochs: int | None = None,
        *,
        max_steps: int | None = None,
        lr: float = 1e-3,
        batch_size: int = 64,
        validation_size: float = 0.1,
        early_stopping: bool = False,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        knn_monitor: bool | None = None,
        **trainer_kwargs,
    ) -> None:
        """Self-supervised pre-training on all registered cells (labels are not used).

        Parameters
        ----------
        max_epochs
            Passes over the data. When ``None``, derived from ``max_steps``.
        max_steps
            Optimiser-step budget (default 2,000 when ``max_epochs`` is also ``None``);
            contrastive learning needs steps, not epochs.
        lr
            Peak learning rate (AdamW; linear warm-up over 10% of the steps, at most 500,
            then cosine decay).
        batch_size
            Cells per mini-batch (two views each). Clipped to the number of cells.
        validation_size
            Share of cells held out for the validation losses.
        early_stopping
            Stop when ``validation_loss`` stops improving.
        accelerator, devices
            Lightning device settings (``"cpu"``, ``"gpu"``; several GPUs with
            ``strategy="ddp_find_unused_parameters_true"``).
        plan_kwargs
            Passed to :class:`~scrobust_sc.train.PretrainingPlan`.
        datasplitter_kwargs
            Passed to :class:`scvi.dataloaders.DataSplitter`.
        checkpoint_dir
            Folder where a resumable checkpoint (``last.ckpt``: weights, optimiser and
            scheduler states, epoch, random states, history) is written atomically after
            every epoch. ``None``: no checkpoint.
        resume
            Continue from the checkpoint in ``checkpoint_dir`` (same settings and data
            required); the result equals an uninterrupted run. Without a checkpoint there yet,
            training starts from the beginning.
        knn_monitor
            Log ``knn_accuracy`` in :attr:`history`: 5-fold kNN (k 15) accuracy of the
            registered labels from the embeddings (:meth:`get_latent_representation`) of
            about 500 labelled cells (at least 5 a type), about 8 times a run (NaN between).
            The labels never reach the weights, and the run makes the same random draws as
            without it. ``None``: on when labels with at least 2 types of 5 cells are
            registered. For other cells or another schedule, pass ``knn_monitor=False,
            callbacks=[KNNMonitor(...)]`` (:class:`~scrobust_sc.train.KNNMonitor`).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Examples
        --------
        >>> model.pretrain(max_steps=500)  # doctest: +SKIP
        >>> model.history["knn_accuracy"].dropna()  # doctest: +SKIP
        >>> model.pretrain(max_steps=500, checkpoint_dir="ckpt/", resume=True)  # doctest: +SKIP
        >>> model.history["contrastive_loss_train"].tail()  # doctest: +SKIP
        """
        for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
            if value is not None:
                check_whole_number(value, name, 0)
        if not 0 <= validation_size < 1:
            raise ValueError(f"validation_size must be in [0, 1) (a share of the cells), not {validation_size!r}.")
        n_cells = self.adata.n_obs
        n_train = n_cells - (math.ceil(validation_size * n_cells) if validation_size else 0)
        batch_size = self._batch_size_for(n_train, batch_size)
        steps_per_epoch = max(n_train // batch_size, 1)
        if max_epochs is None:
            steps = DEFAULT_PRETRAIN_STEPS if max_steps is None else max_steps
            max_epochs = math.ceil(steps / steps_per_epoch)
        if max_steps is not None:
            trainer_kwargs["max_steps"] = max_steps
        plan = PretrainingPlan(self.module, lr=lr, **(plan_kwargs or {}))
        monitor = self._knn_monitor(knn_monitor)
        if monitor is not None:
            trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), monitor]
        self.train_params_["pretrain"] = {
            "max_epochs": max_epochs,
            "max_steps": max_steps,
            "lr": lr,
            "batch_size": batch_size,
        }
        self._fit(
            plan,
            None,
            max_epochs=max_epochs,
            batch_size=batch_size,
            validation_size=validation_size,
            drop_last=True,
            accelerator=accelerator,
            devices=devices,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
            monitor="validation_loss",
            stage="pretrain",
            run_settings={
                **self.train_params_["pretrain"],
                "validation_size": validation_size,
                "early_stopping": early_stopping,
                "plan_kwargs": plan_kwargs,
            },
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
        self.is_pretrained_ = True

    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = 1e-3,
        batch_size: int = 32,
        n_genes: int = 800,
        gene_selection: str = "mixed",
        class_weight: str | None = "sqrt",
        validation_size: float = 0.1,
        freeze_encoder: bool = False,
        keep_best: bool | Literal["auto"] = "auto",
        label_smoothing: float = 0.0,
        token_dropout: float = 0.0,
        linear_expert: bool | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        **trainer_kwargs,
    ) -> None:
        """Fine-tune for cell-type annotation on the labelled cells.

        Each cell's input is its first ``n_genes`` expressed genes chosen by
        ``gene_selection``: ``"unique"`` (highly unique genes, the paper), ``"mixed"`` (half
        highly unique, half most expressed; default, better measured), ``"expressed"``,
        ``"hvg"`` or ``"random"``. A 2-layer classifier reads the CLS output. The validation
        split is stratified and keeps rare types; the weights of the epoch with the best
        validation macro-F1 are restored at the end (see ``keep_best``).

        Parameters
        ----------
        max_epochs
            Passes over the labelled training cells. ``None`` (default):
            :data:`DEFAULT_FINETUNE_EPOCHS` (20), or more on a small reference, so that
            fine-tuning takes at least :data:`MIN_FINETUNE_STEPS` (500) optimiser steps
            (:func:`finetune_epochs`).
        lr
            Peak learning rate (warm-up then cosine decay).
        batch_size
            Cells per mini-batch.
        n_genes
            Genes per cell (``k``).
        gene_selection
            See above.
        class_weight
            ``"sqrt"`` (default), ``"balanced"`` or ``None``: weights of rare types in the loss.
        validation_size
            Share of each type held out to choose the epoch; 0 keeps the last epoch.
        freeze_encoder
            Train the classifier only (the paper's novel-type setting).
        keep_best
            Restore the weights of the epoch with the best validation macro-F1 (``True``) or
            keep the last epoch's (``False``). ``"auto"`` (default) restores the best epoch
            only when the validation split holds every type of the training split: types
            too rare to be validated (fewer than 5 cells) would otherwise be ignored by the
            choice, which then favours early epochs that have not learnt them yet.
        label_smoothing
            Cross-entropy label smoothing.
        token_dropout
            Share of each cell's input genes hidden at random in every training step.
        linear_expert
            After fine-tuning, fit a logistic regression on the linear path's genes
            (standardised, clipped ``log1p`` values of every gene, not only the input genes)
            and add its logits to the network's: a product of the two models'
            probabilities. It is fitted on the cells the network trained on for the
            novelty calibration, which reads the validation cells, then refitted on every
            labelled cell. ``None`` (default) is on, for genes and for peaks; ``False``
            turns it off. Seconds on the shared references; it lifts macro-F1 where the
            network alone misses types of a handful of cells, and on scATAC peaks
            (``docs/design.md``, "The linear expert").
        accelerator, devices, plan_kwargs, datasplitter_kwargs, checkpoint_dir, resume, **trainer_kwargs
            As in :meth:`pretrain`; the checkpoint also holds the best validation epoch so far.
            ``plan_kwargs`` go to :class:`~scrobust_sc.train.ClassifierPlan`, e.g.
            ``{"encoder_lr_scale": 0.1}`` to fine-tune the encoder at a tenth of ``lr``.

        Examples
        --------
        >>> model.train(max_epochs=10)  # doctest: +SKIP
        >>> model.train(max_epochs=50, checkpoint_dir="ckpt/", resume=True)  # doctest: +SKIP
        """
        if self.module.classifier is None:
            raise ValueError(
                "No cell-type labels were registered: call `SCRobust.setup_anndata(adata, labels_key=...)` "
                "before creating the model."
            )
        if gene_selection not in GENE_SELECTIONS:
            raise ValueError(f"gene_selection must be one of {GENE_SELECTIONS}, not {gene_selection!r}.")
        check_whole_number(n_genes, "n_genes", 1)
        if not 0 <= token_dropout < 1:
            raise ValueError(f"token_dropout must be in [0, 1) (a share of each cell's genes), not {token_dropout!r}.")
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        n_classes = len(self.cell_types_)
        labelled = np.flatnonzero(codes < n_classes)
        if labelled.size == 0:
            raise ValueError("No labelled cells: every cell carries the unlabelled category.")
        present = np.unique(codes[labelled])
        if present.size < 2:
            raise ValueError(
                f"Fine-tuning needs at least 2 cell types; the labels hold only {self.cell_types_[present[0]]!r}."
            )
        train_pos, val_pos = stratified_validation_split(
            codes[labelled], validation_size, seed=settings.seed or 0, class_names=self.cell_types_
        )
        train_idx, val_idx = labelled[train_pos], labelled[val_pos]
        keep_best = _resolve_keep_best(keep_best, codes[train_idx], codes[val_idx], self.cell_types_)
        batch_size = self._batch_size_for(train_idx.size, batch_size, minimum=1)
        drop_last = train_idx.size > batch_size
        if max_epochs is None:
            max_epochs = finetune_epochs(train_idx.size, batch_size, drop_last=drop_last)
            if max_epochs > DEFAULT_FINETUNE_EPOCHS:
                logger.info(
                    "%d labelled training cells: fine-tuning for %d epochs to reach %d optimiser steps.",
                    train_idx.size,
                    max_epochs,
                    MIN_FINETUNE_STEPS,
                )
        weights = class_weights(codes[train_idx], n_classes, class_weight)
        self.module.class_weight.copy_(torch.as_tensor(weights, dtype=torch.float32))
        self.module.clear_reference()  # stale once the weights change; empty, as checkpoints expect
        self.module.clear_linear_expert()
        if linear_expert is None:
            linear_expert = True
        for p in self.module.encoder.parameters():
            p.requires_grad_(not freeze_encoder)
        plan = ClassifierPlan(
            self.module,
            lr=lr,
            gene_selection=gene_selection,
            n_genes=n_genes,
            label_smoothing=label_smoothing,
            token_dropout=token_dropout,
            keep_best=keep_best,
            **(plan_kwargs or {}),
        )
        self.train_params_["train"] = {
            "max_epochs": max_epochs,
            "lr": lr,
            "batch_size": batch_size,
            "n_genes": n_genes,
            "gene_selection": gene_selection,
            "class_weight": class_weight,
            "freeze_encoder": freeze_encoder,
            "linear_expert": bool(linear_expert),
        }
        try:
            unused = np.setdiff1d(np.arange(codes.size), np.concatenate([train_idx, val_idx]))
            self._fit(
                plan,
                [train_idx, val_idx, unused],
                max_epochs=max_epochs,
                batch_size=batch_size,
                validation_size=validation_size,
                drop_last=drop_last,
                accelerator=accelerator,
                devices=devices,
                datasplitter_kwargs=datasplitter_kwargs,
                trainer_kwargs=trainer_kwargs,
                monitor="classification_loss_validation",
                stage="train",
                run_settings={
                    **self.train_params_["train"],
                    "validation_size": validation_size,
                    "keep_best": keep_best,
                    "label_smoothing": label_smoothing,
                    "token_dropout": token_dropout,
                    "plan_kwargs": plan_kwargs,
                },
                checkpoint_dir=checkpoint_dir,
                resume=resume,
            )
        finally:
            for p in self.module.encoder.parameters():
                p.requires_grad_(True)
            if plan.restore_best():
                self.train_params_["train"]["best_epoch"] = int(plan.best_epoch) + 1
                self.train_params_["train"]["best_validation_f1_macro"] = float(plan.best_score)
            self.module.eval()
        if linear_expert:
            self._fit_linear_expert(train_idx, codes[train_idx])
        self._store_reference(train_idx, codes[train_idx], val_idx)
        if linear_expert and val_idx.size:
            # The calibration above read validation cells that neither model fitted; now the
            # expert may learn from them too (the network keeps its best epoch as it is).
            self._fit_linear_expert(labelled, codes[labelled])
        self.is_fine_tuned_ = True

    @torch.inference_mode()
    def _fit_linear_expert(self, cells: np.ndarray, codes: np.ndarray) -> None:
        """Fit :func:`fit_linear_expert` on ``cells`` (at most 20,000, every type kept) and store it."""
        start = time.perf_counter()
        rows = expert_rows(codes, MAX_CHOICE_CELLS, seed=settings.seed or 0)
        order = np.argsort(cells[rows])
        cells, codes = cells[rows][order], codes[rows][order]
        blocks = [
            sparse.csr_matrix(torch.log1p(self.module._normalized(t)).cpu().numpy())
            for t in self._batches(None, cells, 256)
        ]
        mask = getattr(self.module, "gene_linear_mask", None)
        genes = None if mask is None else mask.cpu().numpy() > 0
        weight, bias, scale = fit_linear_expert(
            sparse.vstack(blocks), codes, self.module.n_labels, genes, seed=settings.seed or 0
        )
        self.module.set_linear_expert(torch.from_numpy(weight), torch.from_numpy(bias), torch.from_numpy(scale))
        logger.info(
            "Linear expert: a logistic regression on %d genes of %d cells, %.1f s.",
            int((scale > 0).sum()),
            cells.size,
            time.perf_counter() - start,
        )

    @torch.inference_mode()
    def _store_reference(
        self, cells: np.ndarray, codes: np.ndarray, held_out: np.ndarray, max_per_type: int = 500
    ) -> None:
        """References of :meth:`predict_novelty`: training cells' embeddings, held-out cells' energy.

        Up to ``max_per_type`` training cells per type are kept. The energy is calibrated on the
        ``held_out`` (validation) cells, which the weights never fitted. With fewer than
        :data:`MIN_ENERGY_CELLS` of them it is not calibrated at all (training cells have
        larger logits than new cells of the same types, so they would call known cells
        Unknown) and novelty is the distance score alone.
        """
        rng = np.random.default_rng(settings.seed or 0)
        keep = np.concatenate([rng.permutation(cells[codes == c])[:max_per_type] for c in np.unique(codes)])
        keep.sort()
        embeddings, labels = [], []
        for t in self._batches(None, keep, 256):
            embeddings.append(self._classify_batch(t)[1])
            labels.append(t[REGISTRY_KEYS.LABELS_KEY].view(-1).long())
        self.module.set_reference(torch.cat(embeddings), torch.cat(labels))
        if held_out.size < MIN_ENERGY_CELLS:
            logger.info(
                "Novelty is the distance score alone: %d validation cells are too few (under %d) to calibrate "
                "the energy score. Pass a larger validation_size= to calibrate it.",
                held_out.size,
                MIN_ENERGY_CELLS,
            )
            return
        logits = [self._classify_batch(t)[0] for t in self._batches(None, np.sort(held_out), 256)]
        self.module.set_energy_reference(torch.cat(logits))

    def _classify_batch(self, tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embeddings of one mini-batch with the fine-tuning's gene selection."""
        params = self.train_params_.get("train", {})
        return self.module.classify(
            tensors, params.get("gene_selection", "mixed"), params.get("n_genes", 800), return_embedding=True
        )

    # --------------------------------------------------------------- inference
    def _check_batch_budget(self, batch_size: int) -> None:
        """Mini-batches are dense cells x genes tensors: refuse one beyond the memory budget."""
        check_dense_budget(
            batch_size,
            len(self.gene_names_),
            np.float32,
            what=f"A mini-batch of {batch_size} cells",
            fix="Pass a smaller batch_size=.",
        )

    def _batches(self, adata: ad.AnnData | None, indices, batch_size: int, *, transient: bool = False):
        """Mini-batch tensors of ``adata``; ``transient``: forget its registration afterwards."""
        if adata is not None and adata.isbacked and adata is not self.adata:
            yield from self._backed_batches(adata, indices, batch_size)
            return
        validated = self._validate_anndata(adata)
        made_here = adata is not None and validated is not adata and adata is not self.adata
        n_cells = validated.n_obs if indices is None else len(indices)
        self._check_batch_budget(min(batch_size, max(n_cells, 1)))
        loader = self._make_data_loader(adata=validated, indices=indices, batch_size=batch_size)
        self.module.eval()
        try:
            for tensors in loader:
                yield {k: v.to(self.device) for k, v in tensors.items()}
        finally:
            if transient or made_here:  # the aligned copy made for this call is not kept alive
                self._forget_anndata(validated)

    def _forget_anndata(self, adata: ad.AnnData) -> None:
        """Drop scvi-tools' registration of ``adata`` (it keeps every validated AnnData alive).

        Never the model's own AnnData, whose identifier a chunk read from its file may carry.
        """
        uuid = adata.uns.get(_SCVI_UUID_KEY)
        own = self.adata_manager.adata_uuid if self.adata_manager is not None else None
        if uuid is None or uuid == own:
            return
        self._per_instance_manager_store.get(self.id, {}).pop(uuid, None)
        self._setup_adata_manager_store.pop(uuid, None)

    def _forget_queries(self) -> None:
        """Drop scvi-tools' registrations of every query copy; the model's own AnnData stays."""
        for uuid in list(self._per_instance_manager_store.get(self.id, {})):
            own = self.adata_manager.adata_uuid if self.adata_manager is not None else None
            if uuid != own:
                self._per_instance_manager_store[self.id].pop(uuid, None)
                self._setup_adata_manager_store.pop(uuid, None)

    def _backed_batches(self, adata: ad.AnnData, indices, batch_size: int):
        """Mini-batches of a backed AnnData, read from disk :data:`BACKED_CHUNK_CELLS` cells at a time.

        Memory stays bounded by one chunk whatever the number of cells; cells come out in
        the order of ``indices``.
        """
        positions = np.arange(adata.n_obs) if indices is None else np.asarray(indices).ravel()
        genes = None
        if adata.is_view:  # anndata cannot index a view of a backed file again: read from the file
            adata, rows_in_file, genes = _backed_view_in_file(adata)
            positions = rows_in_file[positions]
        layer = self._setup_args.get("layer")
        matrix = adata.X if layer is None or layer not in adata.layers else adata.layers[layer]
        if matrix is not None and not hasattr(matrix, "to_memory"):  # a dense h5py dataset
            check_dense_budget(
                min(BACKED_CHUNK_CELLS, positions.size),
                adata.n_vars,
                matrix.dtype,
                what=f"Reading the backed (on-disk) dense query matrix {BACKED_CHUNK_CELLS} cells at a time",
                fix="Store the counts sparse in the .h5ad file (`adata.X = scipy.sparse.csr_matrix(adata.X)` "
                "before writing), or lower `scrobust_sc.model._model.BACKED_CHUNK_CELLS`.",
            )
        for start in range(0, positions.size, BACKED_CHUNK_CELLS):
            part = positions[start : start + BACKED_CHUNK_CELLS]
            rows, order = np.unique(part, return_inverse=True)  # h5py reads increasing rows
            chunk = adata[rows].to_memory()
            if layer is not None and layer not in chunk.layers:  # the file's X (tl.annotate's layer="X")
                chunk.layers[layer] = chunk.X
            if genes is not None:
                chunk = chunk[:, genes].copy()
            if not np.array_equal(order, np.arange(rows.size)):
                chunk = chunk[order].copy()
            yield from self._batches(chunk, None, batch_size, transient=True)

    def compile_encoder(self, **compile_kwargs) -> None:
        """Compile the Transformer encoder with :func:`torch.compile`, in place.

        Training and inference then run the compiled encoder. The first batches pay the
        compilation (tens of seconds on a CPU); sequence lengths vary from batch to batch,
        so ``dynamic=True`` is the default to avoid recompiling for each length. Parameter
        names, saving and loading are unchanged. Worth it for long runs on a GPU; on a CPU,
        measure first (``benchmarks/throughput.py --compile``, ``docs/design.md``).

        Parameters
        ----------
        **compile_kwargs
            Passed to :func:`torch.compile` (``mode=``, ``backend=``, ``dynamic=``...).

        Examples
        --------
        >>> model.compile_encoder(mode="max-autotune")  # doctest: +SKIP
        """
        self.module.encoder.compile(**{"dynamic": True, **compile_kwargs})

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        layer: int = -1,
        gene_selection: str = "unique",
        n_genes: int = 1000,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Cell embeddings: the CLS output of an encoder layer.

        Parameters
        ----------
        adata
            Cells to embed (default: the registered AnnData). Another AnnData is aligned to
            the model's genes by name; missing genes are reported and count as not expressed.
        indices
            Subset of cells.
        layer
            Encoder layer (1-based, or negative from the end).
        gene_selection
            Each cell's input genes: ``"unique"`` (its highly unique genes, the paper),
            ``"mixed"``, ``"expressed"``, ``"hvg"`` or ``"random"``.
        n_genes
            Genes per cell.
        batch_size
            Cells per mini-batch.

        Returns
        -------
        ``(n_cells, d_model)`` float32 array.

        Examples
        --------
        >>> adata.obsm["X_scrobust"] = model.get_latent_representation()  # doctest: +SKIP
        """
        if gene_selection not in GENE_SELECTIONS:
            raise ValueError(f"gene_selection must be one of {GENE_SELECTIONS}, not {gene_selection!r}.")
        check_whole_number(n_genes, "n_genes", 1)
        self.module.encoder._resolve_layer(layer)
        source = self.adata if adata is None else adata
        indices = cell_positions(indices, source.n_obs)
        n_cells = source.n_obs if indices is None else len(indices)
        out: np.ndarray | None = None  # filled batch by batch: no per-batch tensors kept, no copy at the end
        start = 0
        for t in self._batches(adata, indices, batch_size):
            z = self.module.inference(t, gene_selection=gene_selection, n_genes=n_genes, layer=layer)["z"]
            if out is None:
                out = np.empty((n_cells, z.shape[1]), dtype=np.float32)
            out[start : start + z.shape[0]] = z.float().cpu().numpy()
            start += z.shape[0]
        if out is None:
            return np.zeros((0, self.module.encoder.embedding.weight.shape[1]), dtype=np.float32)
        return out

    @torch.inference_mode()
    def _classify_cells(self, adata, indices, batch_size: int, *, with_empty: bool = False) -> tuple:
        """Probabilities and novelty of each cell; ``with_empty``: also which cells have no input.

        A cell without input has no count (or value) in any of the model's genes.
        """
        if self.module.classifier is None:
            raise ValueError("This model has no classifier: fine-tune it with labels first (`model.train`).")
        indices = cell_positions(indices, (adata if adata is not None else self.adata).n_obs)
        probs, novelty, empty = [], [], []
        for t in self._batches(adata, indices, batch_size):
            logits, z = self._classify_batch(t)
            p = torch.softmax(logits.float(), dim=1)
            probs.append(p.cpu())
            novelty.append(self.module.novelty(z, logits).cpu())
            empty.append(~(t[REGISTRY_KEYS.X_KEY] != 0).any(dim=1).cpu())
        names = (adata if adata is not None else self.adata).obs_names
        if indices is not None:
            names = names[np.asarray(indices)]
        if not probs:  # no cells asked for
            proba = pd.DataFrame(np.zeros((0, len(self.cell_types_)), np.float32), columns=self.cell_types_)
            return (proba, np.zeros(0), np.zeros(0, bool)) if with_empty else (proba, np.zeros(0))
        proba = pd.DataFrame(torch.cat(probs).numpy(), index=names, columns=self.cell_types_)
        if with_empty:
            return proba, torch.cat(novelty).numpy(), torch.cat(empty).numpy()
        return proba, torch.cat(novelty).numpy()

    def predict_proba(self, adata: ad.AnnData | None = None, indices=None, *, batch_size: int = 256) -> pd.DataFrame:
        """Class probabilities, cells x cell types.

        Examples
        --------
        >>> model.predict_proba(query).idxmax(axis=1)  # doctest: +SKIP
        """
        return self._classify_cells(adata, indices, batch_size)[0]

    def predict_novelty(self, adata: ad.AnnData | None = None, indices=None, *, batch_size: int = 256) -> np.ndarray:
        """Novelty of each cell: how unlike every training type it looks; above 1, "Unknown".

        The larger of two scores, each 1 at its threshold:

        - energy: ``-logsumexp`` of the classifier's logits, 0 at the median of the
          validation cells (known types the weights never fitted) and 1 at their 99th
          percentile. A cell of an unseen type gets low logits for every type. Left out
          when fine-tuning held out fewer than 20 validation cells.
        - distance: the mean distance (in the fine-tuned embedding) to the 5 nearest
          training cells of the predicted type, over 1.2 times the 95th percentile of the
          same distance among that type's training cells.

        Models saved before the energy score existed load with the distance score only.

        Examples
        --------
        >>> novel = model.predict_novelty(query) > 1  # doctest: +SKIP
        """
        return self._classify_cells(adata, indices, batch_size)[1]

    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices=None,
        *,
        soft: bool = False,
        unknown_threshold: float | None = None,
        novelty_threshold: float | None = None,
        allowed_labels: Sequence[str] | None = None,
        batch_size: int = 256,
    ):
        """Predicted cell types, ``"Unknown"`` where the confidence is below a threshold.

        The confidence of a cell is its largest class probability.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to annotate, as in :meth:`get_latent_representation`.
        soft
            Return the probabilities (a DataFrame) instead of labels.
        unknown_threshold
            Cells with confidence below it are called ``"Unknown"``; ``None`` never does.
        novelty_threshold
            Cells whose novelty (:meth:`predict_novelty`) exceeds it are called
            ``"Unknown"``; ``None`` never does.
        allowed_labels
            Restrict predictions to these cell types (probabilities renormalised over them).

        Returns
        -------
        Labels (``numpy`` array of str), or the probability DataFrame when ``soft``.

        Examples
        --------
        >>> labels = model.predict(query, unknown_threshold=0.5)  # doctest: +SKIP
        """
        proba, novelty = self._classify_cells(adata, indices, batch_size)
        proba = restrict_labels(proba, allowed_labels)
        if soft:
            return proba
        labels = proba.columns.to_numpy()[proba.to_numpy().argmax(axis=1)].astype(object)
        if unknown_threshold is not None:
            labels[proba.to_numpy().max(axis=1) < unknown_threshold] = UNKNOWN_LABEL
        if novelty_threshold is not None:
            labels[novelty > novelty_threshold] = UNKNOWN_LABEL
        return labels.astype(str)

    def get_attention(
        self,
        adata: ad.AnnData | None = None,
        *,
        layer: int = -1,
        gene_selection: str = "unique",
        n_genes: int = 1000,
        batch_size: int = 256,
        groups=None,
    ):
        """CLS attention to each gene token, averaged over heads.

        Returns a sparse cells x genes matrix (0 where a gene was not in a cell's input),
        or, with ``groups``, a groups x genes DataFrame of mean attention accumulated batch
        by batch. See :func:`scrobust_sc.model._attention.gene_attention`.

        Examples
        --------
        >>> attn = model.get_attention(adata)  # doctest: +SKIP
        """
        from ._attention import gene_attention

        return gene_attention(
            self,
            adata,
            layer=layer,
            gene_selection=gene_selection,
            n_genes=n_genes,
            batch_size=batch_size,
            groups=groups,
        )

    # --------------------------------------------------------------- save / load
    def save(self, dir_path: str | Path, *, overwrite: bool = False, **kwargs) -> None:
        """Save weights (safetensors) and settings, vocabulary, gene ranking (JSON), atomically.

        Parameters
        ----------
        dir_path
            Folder to write ``model.safetensors`` and ``model.json`` into.
        overwrite
            Replace a model already saved there (refused by default).

        Examples
        --------
        >>> model.save("pbmc_model/")  # doctest: +SKIP
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)} (AnnData is not saved with the model).")
        save_model_files(self, Path(dir_path), overwrite=overwrite)

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: ad.AnnData | None = None,
        *,
        accelerator: str = "cpu",
        device: str | int = "auto",
        **kwargs,
    ):
        """Load a saved model; never executes code from the files.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Optional AnnData to attach (aligned to the model's genes by name). Its labels of
            the model's cell types are kept, so the model can be trained further on it.
        accelerator, device
            Where to place the weights.

        Examples
        --------
        >>> model = SCRobust.load("pbmc_model/", adata=adata)  # doctest: +SKIP
        """
        meta, state = load_model_files(Path(dir_path), expected_class=cls.__name__)
        # models saved before these options had neither
        init_params = {"gene_linear_scaling": "none", "gene_linear_hvgs": None, **meta["init_params"]}
        model = cls(adata=None, registry=meta["registry"], **init_params)
        model.gene_names_ = meta["gene_names"]
        for name in (
            "reference_embedding",
            "reference_label",
            "reference_threshold",
            "reference_energy",
            "expert_weight",
            "expert_bias",
            "expert_scale",
        ):
            if name in state:  # sized by the training data
                setattr(model.module, name, torch.empty_like(state[name]))
        missing, unexpected = model.module.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith(("classifier", "reference_", "expert_"))]:
            raise ValueError(
                f"{dir_path}: the weights do not fit the saved settings "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}). The file is corrupted."
            )
        for name, value in meta["attributes"].items():
            setattr(model, name, value)
        model.is_trained_ = bool(meta["attributes"].get("is_trained_", True))
        model.module.eval()
        if accelerator != "cpu" or device != "auto":
            from scvi.model._utils import parse_device_args

            _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
            model.module.to(torch_device)
        if adata is not None:
            aligned = model._validate_anndata(adata, keep_labels=True)
            model._adata = aligned
            model._adata_manager = model.get_anndata_manager(aligned)
        return model
