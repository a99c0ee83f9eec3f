"""The scvi-tools module: pure torch, one mini-batch at a time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scrobust_sc._constants import EXPERT_VALUE_CLIP, GENE_SELECTIONS
from scrobust_sc.nn import (
    GeneTransformer,
    masked_mse,
    mlp_head,
    normalize_atac_batch,
    normalize_batch,
    nt_xent_loss,
    sample_random_genes,
    select_mixed_genes,
    select_ranked_genes,
    trim_padding,
)

#: Ways the linear gene path can read values (see :class:`SCRobustModule`).
GENE_LINEAR_SCALINGS = ("standardized", "none")
#: Standardised values above this are clipped in the linear path (as ``sc.pp.scale(max_value=10)``).
LINEAR_VALUE_CLIP = 10.0
#: Share of held-out known cells whose energy novelty stays at or under 1 (the calibration quantile).
ENERGY_QUANTILE = 0.99
#: Distance novelty (over the type's own 95th percentile) that counts as 1 in :meth:`SCRobustModule.novelty`.
DISTANCE_NOVELTY_SCALE = 1.2


class SCRobustModule(BaseModuleClass):
    """scRobust encoder with its pre-training and classification heads.

    Parameters
    ----------
    n_genes
        Vocabulary size (genes of the training data).
    n_labels
        Number of cell types of the classifier head (0: no classifier).
    d_model, n_heads, n_layers, dropout, value_encoding, norm_first
        Encoder settings, see :class:`~scrobust_sc.nn.GeneTransformer`.
    n_view_genes
        Genes per random view in pre-training.
    temperature
        NT-Xent temperature.
    input_is_log
        Whether the registered data are already log-normalised.
    gene_linear_head
        Add to the classifier's logits a per-gene, per-class weight times the value of each
        of the cell's input gene tokens (a linear path beside the Transformer's CLS output).
    gene_linear_scaling
        ``"standardized"``: the linear path reads each value times the gene's ``gene_scale``
        (``1 / std`` over the training cells, set by the model), clipped at
        ``LINEAR_VALUE_CLIP``; ``"none"``: the ``log1p`` values.
    gene_linear_hvgs
        Restrict the linear path to this many genes (the model marks them in the
        ``gene_linear_mask`` buffer: its highly variable genes); ``None``: every gene.
    value_augmentation
        Scale of the random per-view factor ``exp(U(-a, a))`` applied to normalised values
        before ``log1p``; the per-gene noise is ``exp(N(0, (a / 1.75)^2))``. 0 turns it off.
    modality
        ``"rna"`` (counts normalised per cell) or ``"atac"`` (peaks: binarised, see ``atac_values``).
    atac_values
        For ATAC: ``"binary"`` (every accessible peak has value ``log1p(1)``) or ``"tfidf"``
        (``log1p(tf * idf * 1e4)``, idf of the training data in the ``idf`` buffer).
    """

    def __init__(
        self,
        n_genes: int,
        n_labels: int = 0,
        *,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 1,
        dropout: float = 0.1,
        value_encoding: str = "mlp",
        norm_first: bool = True,
        pooling: str = "cls",
        n_view_genes: int = 64,
        temperature: float = 0.07,
        input_is_log: bool = False,
        value_augmentation: float = 0.7,
        gene_linear_head: bool = True,
        gene_linear_scaling: str = "none",
        gene_linear_hvgs: int | None = None,
        modality: str = "rna",
        atac_values: str = "binary",
    ):
        super().__init__()
        self.modality = modality
        self.atac_values = atac_values
        self.n_genes = n_genes
        self.n_view_genes = n_view_genes
        self.temperature = temperature
        self.input_is_log = input_is_log
        self.value_augmentation = value_augmentation
        self.encoder = GeneTransformer(
            n_genes, d_model, n_heads, n_layers, dropout, value_encoding, norm_first, pooling
        )
        self.contrastive_head = mlp_head(d_model, d_model, dropout=dropout)
        self.expression_head = mlp_head(d_model, d_model, dropout=dropout)
        self.n_labels = n_labels
        self.classifier = mlp_head(d_model, n_labels, dropout=dropout) if n_labels > 0 else None
        # per-gene, per-class weights read off the cell's own gene tokens (a "wide" path)
        self.gene_linear = nn.Embedding(n_genes, n_labels) if n_labels > 0 and gene_linear_head else None
        if self.gene_linear is not None:
            nn.init.zeros_(self.gene_linear.weight)
        if gene_linear_scaling not in GENE_LINEAR_SCALINGS:
            raise ValueError(f"gene_linear_scaling must be one of {GENE_LINEAR_SCALINGS}, not {gene_linear_scaling!r}.")
        self.gene_linear_scaling = gene_linear_scaling
        if self.gene_linear is not None and gene_linear_scaling == "standardized":
            self.register_buffer("gene_scale", torch.ones(n_genes))
        if gene_linear_hvgs is not None and int(gene_linear_hvgs) < 1:
            raise ValueError(f"gene_linear_hvgs must be a positive number of genes or None, not {gene_linear_hvgs!r}.")
        self.gene_linear_hvgs = None if gene_linear_hvgs is None else int(gene_linear_hvgs)
        if self.gene_linear is not None and self.gene_linear_hvgs is not None:  # only then: older models load
            self.register_buffer("gene_linear_mask", torch.ones(n_genes))
        # gene orderings, computed from the training data and saved with the weights
        self.register_buffer("unique_score", torch.zeros(n_genes))
        self.register_buffer("hvg_score", torch.zeros(n_genes))
        if modality == "atac" and atac_values == "tfidf":  # only then, so older saved models keep loading
            self.register_buffer("idf", torch.ones(n_genes))
        self.register_buffer("class_weight", torch.ones(max(n_labels, 1)))
        self.register_buffer("reference_embedding", torch.zeros(0, d_model))
        self.register_buffer("reference_label", torch.zeros(0, dtype=torch.long))
        self.register_buffer("reference_threshold", torch.zeros(0))
        # median and calibration quantile of held-out cells' energy (-logsumexp of the logits)
        self.register_buffer("reference_energy", torch.zeros(0))
        # the linear expert (a logistic regression fitted after fine-tuning); empty until then
        self.register_buffer("expert_weight", torch.zeros(0, max(n_labels, 1)))
        self.register_buffer("expert_bias", torch.zeros(0))
        self.register_buffer("expert_scale", torch.zeros(0))

    # ---- inputs -----------------------------------------------------------------
    def _normalized(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        x = tensors[REGISTRY_KEYS.X_KEY].to(torch.float32)
        if self.modality == "atac":
            return normalize_atac_batch(x, getattr(self, "idf", None))
        return normalize_batch(x, input_is_log=self.input_is_log)

    def select_genes(self, normalized: torch.Tensor, gene_selection: str, n_genes: int):
        """Choose each cell's input genes: ``(idx, values, valid)`` with padding trimmed."""
        expressed = normalized > 0
        values = torch.log1p(normalized)
        if gene_selection == "unique":
            idx, valid = select_ranked_genes(expressed, self.unique_score, n_genes)
        elif gene_selection == "hvg":
            idx, valid = select_ranked_genes(expressed, self.hvg_score, n_genes)
        elif gene_selection == "expressed":
            idx, valid = select_ranked_genes(expressed, values, n_genes)
        elif gene_selection == "mixed":
            idx, valid = select_mixed_genes(expressed, values, self.unique_score, n_genes)
        elif gene_selection == "random":
            idx, valid = sample_random_genes(expressed, n_genes)
        else:
            raise ValueError(f"gene_selection must be one of {GENE_SELECTIONS}; got {gene_selection!r}.")
        idx, valid = trim_padding(idx, valid)
        vals = values.gather(1, idx) * valid
        return idx, vals, valid

    # ---- scvi-tools module interface ----------------------------------------------
    def _get_inference_input(self, tensors, **kwargs):
        return {"tensors": tensors}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {}

    @auto_move_data
    def inference(self, tensors, gene_selection: str = "unique", n_genes: int = 1000, layer: int = -1):
        """Cell embeddings (CLS output of ``layer``) for the cells' selected genes."""
        idx, vals, valid = self.select_genes(self._normalized(tensors), gene_selection, n_genes)
        return {"z": self.encoder(idx, vals, valid, layer=layer)}

    def generative(self, *args, **kwargs):
        """No generative model: scRobust is an encoder."""
        return {}

    def loss(self, tensors, inference_outputs=None, generative_outputs=None, **kwargs) -> LossOutput:
        """Self-supervised pre-training loss (contrastive + expression prediction)."""
        return self.pretraining_loss(tensors)

    def sample(self, *args, **kwargs):
        """Not available: scRobust does not model counts."""
        raise NotImplementedError("scRobust is not a generative model.")

    # ---- pre-training -------------------------------------------------------------
    def _augment(self, normalized_values: torch.Tensor) -> torch.Tensor:
        a = self.value_augmentation
        if not self.training or a <= 0:
            return torch.log1p(normalized_values)
        b = normalized_values.shape[0]
        cell_factor = torch.empty(b, 1, device=normalized_values.device).uniform_(-a, a)
        gene_noise = torch.randn_like(normalized_values) * (a / 1.75)
        return torch.log1p(normalized_values * torch.exp(cell_factor + gene_noise))

    def pretraining_loss(self, tensors: dict[str, torch.Tensor]) -> LossOutput:
        """Two random views per cell; NT-Xent on their CLS outputs plus expression prediction."""
        normalized = self._normalized(tensors)
        expressed = normalized > 0
        idx1, valid1 = trim_padding(*sample_random_genes(expressed, self.n_view_genes))
        idx2, valid2 = trim_padding(*sample_random_genes(expressed, self.n_view_genes))
        v1 = self._augment(normalized.gather(1, idx1)) * valid1
        v2 = self._augment(normalized.gather(1, idx2)) * valid2
        h1 = self.encoder(idx1, v1, valid1)
        h2 = self.encoder(idx2, v2, valid2)
        contrastive = nt_xent_loss(self.contrastive_head(h1), self.contrastive_head(h2), self.temperature)
        g = self.expression_head(h1)
        predicted = torch.einsum("bd,bld->bl", g, self.encoder.embedding.gene_vectors(idx2))
        target = torch.log1p(normalized.gather(1, idx2)) * valid2
        expression = masked_mse(predicted, target, valid2)
        return LossOutput(
            loss=contrastive + expression,
            n_obs_minibatch=normalized.shape[0],
            extra_metrics={"contrastive_loss": contrastive.detach(), "expression_loss": expression.detach()},
        )

    # ---- classification ------------------------------------------------------------
    def classify(
        self, tensors, gene_selection: str, n_genes: int, token_dropout: float = 0.0, return_embedding: bool = False
    ):
        """Class logits ``(B, n_labels)`` from the CLS output (and the linear gene head).

        ``token_dropout`` (training only) hides a random share of each cell's input genes.
        With ``return_embedding``, also the CLS output the classifier read.
        """
        if self.classifier is None:
            raise RuntimeError("This model has no classifier: register labels_key in setup_anndata.")
        normalized = self._normalized(tensors)
        idx, vals, valid = self.select_genes(normalized, gene_selection, n_genes)
        if self.training and token_dropout > 0:
            valid = valid & (torch.rand(valid.shape, device=valid.device) >= token_dropout)
            vals = vals * valid
        z = self.encoder(idx, vals, valid)
        logits = self.classifier(z)
        if self.gene_linear is not None:
            logits = logits + torch.einsum("bl,blk->bk", self._linear_values(idx, vals), self.gene_linear(idx))
        if self.has_linear_expert:
            logits = logits + self.expert_logits(normalized)
        return (logits, z) if return_embedding else logits

    def _linear_values(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """Values the linear gene path reads: standardised and clipped, or as they are; 0 off its genes."""
        if self.gene_linear_scaling == "standardized":
            vals = (vals * self.gene_scale[idx]).clamp(max=LINEAR_VALUE_CLIP)
        if hasattr(self, "gene_linear_mask"):
            vals = vals * self.gene_linear_mask[idx]
        return vals

    # ---- the linear expert --------------------------------------------------------
    @property
    def has_linear_expert(self) -> bool:
        """Whether a fitted linear expert adds its logits to the classifier's."""
        return self.expert_bias.numel() > 0

    def set_linear_expert(self, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> None:
        """Store a fitted expert (:func:`~scrobust_sc.model.fit_linear_expert`'s arrays).

        Examples
        --------
        >>> import torch
        >>> module = SCRobustModule(3, 2, d_model=8, n_heads=2, n_view_genes=4)
        >>> module.set_linear_expert(torch.ones(3, 2), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0]))
        >>> module.expert_logits(torch.tensor([[0.0, 1.0, 5.0]]) * 0).tolist()  # log1p(0) = 0: the bias
        [[0.0, 1.0]]
        """
        device = self.expert_bias.device
        self.expert_weight = torch.as_tensor(weight, dtype=torch.float32, device=device).clone()
        self.expert_bias = torch.as_tensor(bias, dtype=torch.float32, device=device).clone()
        self.expert_scale = torch.as_tensor(scale, dtype=torch.float32, device=device).clone()

    def clear_linear_expert(self) -> None:
        """Drop the expert (before fine-tuning, which makes it stale)."""
        device = self.expert_bias.device
        self.expert_weight = torch.zeros(0, self.expert_weight.shape[1], device=device)
        self.expert_bias = torch.zeros(0, device=device)
        self.expert_scale = torch.zeros(0, device=device)

    def expert_logits(self, normalized: torch.Tensor) -> torch.Tensor:
        """The expert's logits from :meth:`_normalized` values: clipped standardised ``log1p``."""
        features = (torch.log1p(normalized) * self.expert_scale).clamp(max=EXPERT_VALUE_CLIP)
        return features @ self.expert_weight + self.expert_bias

    # ---- novelty: how unlike every training type a cell looks ----------------------
    def set_reference(self, z: torch.Tensor, labels: torch.Tensor, *, k: int = 5, quantile: float = 0.95) -> None:
        """Store reference embeddings and, per type, the ``quantile`` of their own k-NN distances."""
        self.reference_embedding = z.detach().float().clone()
        self.reference_label = labels.detach().long().clone()
        threshold = torch.full((self.n_labels,), float("inf"), device=z.device)
        for c in range(self.n_labels):
            zc = self.reference_embedding[self.reference_label == c]
            if zc.shape[0] > 2:
                d = torch.cdist(zc, zc)
                d.fill_diagonal_(float("inf"))
                kk = min(k, zc.shape[0] - 1)
                own = d.topk(kk, largest=False).values.mean(1)
                threshold[c] = torch.quantile(own, quantile)
        self.reference_threshold = threshold

    def clear_reference(self) -> None:
        """Drop the stored reference cells (before training, which makes them stale)."""
        device = self.reference_embedding.device
        self.reference_embedding = torch.zeros(0, self.reference_embedding.shape[1], device=device)
        self.reference_label = torch.zeros(0, dtype=torch.long, device=device)
        self.reference_threshold = torch.zeros(0, device=device)
        self.reference_energy = torch.zeros(0, device=device)

    def set_energy_reference(self, logits: torch.Tensor, *, quantile: float = ENERGY_QUANTILE) -> None:
        """Store the median and the ``quantile`` of the energy of known cells (held-out ones, ideally).

        Examples
        --------
        >>> import torch
        >>> module = SCRobustModule(20, 2, d_model=8, n_heads=2, n_view_genes=4)
        >>> module.set_energy_reference(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
        >>> module.reference_energy.shape
        torch.Size([2])
        """
        energy = -torch.logsumexp(logits.detach().float(), dim=1)
        self.reference_energy = torch.stack([energy.median(), torch.quantile(energy, quantile)])

    @property
    def has_novelty_reference(self) -> bool:
        """Whether :meth:`novelty` can score anything: an energy or a distance reference is stored.

        Examples
        --------
        >>> SCRobustModule(20, 2, d_model=8, n_heads=2, n_view_genes=4).has_novelty_reference
        False
        """
        return self.reference_energy.numel() == 2 or self.reference_embedding.numel() > 0

    def energy_novelty(self, logits: torch.Tensor) -> torch.Tensor:
        """Energy (``-logsumexp`` of the logits) rescaled to 0 at the reference median, 1 at its quantile.

        0 when no energy reference is stored (models saved before it existed).

        Examples
        --------
        >>> import torch
        >>> module = SCRobustModule(20, 2, d_model=8, n_heads=2, n_view_genes=4)
        >>> module.set_energy_reference(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
        >>> novelty = module.energy_novelty(torch.tensor([[1.0, 1.0], [-5.0, -5.0]]))  # the median; lower logits
        >>> [round(v, 2) for v in novelty.tolist()]
        [0.0, 6.12]
        """
        if self.reference_energy.numel() != 2:
            return torch.zeros(logits.shape[0], device=logits.device)
        median, upper = self.reference_energy
        energy = -torch.logsumexp(logits.float(), dim=1)
        return (energy - median) / (upper - median).clamp_min(1e-6)

    def distance_novelty(self, z: torch.Tensor, predicted: torch.Tensor, *, k: int = 5) -> torch.Tensor:
        """Mean distance to the ``k`` nearest reference cells of the predicted type over that type's threshold.

        Above 1: farther from the type's reference cells than 95% of them are from each other.
        0 when no reference is stored.

        Examples
        --------
        >>> import torch
        >>> module = SCRobustModule(20, 2, d_model=8, n_heads=2, n_view_genes=4)
        >>> module.distance_novelty(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long)).tolist()  # no reference
        [0.0, 0.0, 0.0]
        """
        out = torch.zeros(z.shape[0], device=z.device)
        if self.reference_embedding.numel() == 0:
            return out
        for c in predicted.unique().tolist():
            ref = self.reference_embedding[self.reference_label == c]
            if ref.shape[0] == 0 or not torch.isfinite(self.reference_threshold[c]):
                continue
            rows = predicted == c
            d = torch.cdist(z[rows].float(), ref).topk(min(k, ref.shape[0]), largest=False).values.mean(1)
            out[rows] = d / self.reference_threshold[c].clamp_min(1e-12)
        return out

    def novelty(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """How unlike every training type a cell looks; above 1, it is called "Unknown" by default.

        The larger of two scores, each 1 at its own threshold: :meth:`energy_novelty` (the
        classifier's logits are all low: above 1, beyond all but 1% of the held-out known cells)
        and :meth:`distance_novelty` over :data:`DISTANCE_NOVELTY_SCALE` (the cell lies far
        from the training cells of its predicted type in the embedding).

        Examples
        --------
        >>> import torch
        >>> module = SCRobustModule(20, 2, d_model=8, n_heads=2, n_view_genes=4)
        >>> module.set_energy_reference(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
        >>> (module.novelty(torch.zeros(2, 8), torch.tensor([[1.0, 1.0], [-5.0, -5.0]])) > 1).tolist()
        [False, True]
        """
        distance = self.distance_novelty(z, logits.argmax(1)) / DISTANCE_NOVELTY_SCALE
        return torch.maximum(distance, self.energy_novelty(logits))

    def classification_loss(
        self, tensors, gene_selection: str, n_genes: int, label_smoothing: float = 0.0, token_dropout: float = 0.0
    ):
        """Cross-entropy over labelled cells (label index ``< n_labels``)."""
        logits = self.classify(tensors, gene_selection, n_genes, token_dropout)
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        labelled = labels < self.n_labels
        if not bool(labelled.any()):
            zero = logits.sum() * 0.0
            return zero, logits, labels, labelled
        loss = F.cross_entropy(
            logits[labelled], labels[labelled], weight=self.class_weight, label_smoothing=label_smoothing
        )
        return loss, logits, labels, labelled


def default_view_size(mean_expressed_genes: float, lower: int = 32, upper: int = 128, share: float = 0.1) -> int:
    """View size tied to the data: ``share`` (10%) of the mean number of expressed genes, clipped.

    scATAC cells have few accessible peaks (a few hundred): there the model uses ``share=0.5``.

    Examples
    --------
    >>> default_view_size(900.0)
    90
    >>> default_view_size(130.0, share=0.5)
    65
    """
    return int(min(upper, max(lower, math.floor(share * mean_expressed_genes + 0.5))))
