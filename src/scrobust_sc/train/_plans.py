"""Lightning training plans (scvi-tools ``TrainingPlan`` subclasses) for both stages."""

from __future__ import annotations

import copy
import logging
from functools import partial

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.train import TrainingPlan
from sklearn.metrics import f1_score

from ._schedule import warmup_cosine

logger = logging.getLogger("scrobust_sc")


class _ScheduledPlan(TrainingPlan):
    """AdamW with warm-up and cosine decay over the run's optimiser steps; no ELBO metrics.

    ``encoder_lr_scale`` multiplies the learning rate of the encoder (gene embeddings and
    Transformer), e.g. 0.1 to fine-tune a pre-trained encoder gently while the heads learn
    at ``lr``.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
        max_warmup_steps: int = 500,
        encoder_lr_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(module, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        if not encoder_lr_scale > 0:
            raise ValueError(
                f"encoder_lr_scale must be positive, not {encoder_lr_scale!r}; train(freeze_encoder=True) freezes it."
            )
        self.warmup_fraction = warmup_fraction
        self.max_warmup_steps = max_warmup_steps
        self.encoder_lr_scale = float(encoder_lr_scale)

    #: learning-rate multiplier of the linear gene head (a convex problem that tolerates more)
    linear_lr_scale = 10.0

    def configure_optimizers(self):
        linear = getattr(self.module, "gene_linear", None)
        linear_params = {id(p) for p in linear.parameters()} if linear is not None else set()
        encoder_params = {id(p) for p in self.module.encoder.parameters()} if self.encoder_lr_scale != 1 else set()
        groups = [
            {
                "params": [
                    p
                    for p in self.module.parameters()
                    if p.requires_grad and id(p) not in linear_params and id(p) not in encoder_params
                ]
            }
        ]
        if encoder_params:
            trainable = [p for p in self.module.encoder.parameters() if p.requires_grad]
            groups.append({"params": trainable, "lr": self.lr * self.encoder_lr_scale})
        if linear_params:
            groups.append({"params": list(linear.parameters()), "lr": self.lr * self.linear_lr_scale})
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(int(self.warmup_fraction * total), self.max_warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(warmup_cosine, total_steps=total, warmup_steps=warmup)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _log(self, name: str, value, batch_size: int, prog_bar: bool = False):
        self.log(
            name,
            value,
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            prog_bar=prog_bar,
            sync_dist=self.use_sync_dist,
        )


class PretrainingPlan(_ScheduledPlan):
    """Self-supervised stage: contrastive + expression loss.

    Logs ``train_loss``, ``contrastive_loss_train``, ``expression_loss_train`` and the same
    for ``validation`` each epoch (``validation_loss`` is what early stopping watches).
    """

    def _step(self, batch, mode: str):
        out = self.module.pretraining_loss(batch)
        n = out.n_obs_minibatch
        self._log("train_loss" if mode == "train" else "validation_loss", out.loss, n, prog_bar=True)
        for key, value in out.extra_metrics.items():
            self._log(f"{key}_{mode}", value, n)
        return out.loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        if batch[REGISTRY_KEYS.X_KEY].shape[0] < 2:
            return None
        self._step(batch, "validation")


class ClassifierPlan(_ScheduledPlan):
    """Fine-tuning stage: cross-entropy on labelled cells, best epoch by validation macro-F1.

    The weights of the epoch with the best validation macro-F1 are restored when training
    ends (also after an interruption). Without a validation set the last epoch is kept.
    """

    def __init__(
        self,
        module,
        *,
        gene_selection: str = "mixed",
        n_genes: int = 800,
        label_smoothing: float = 0.0,
        keep_best: bool = True,
        token_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(module, **kwargs)
        self.gene_selection = gene_selection
        self.n_genes = n_genes
        self.label_smoothing = label_smoothing
        self.keep_best = keep_best
        self.token_dropout = token_dropout
        self.best_score = -np.inf
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self._val_true: list[np.ndarray] = []
        self._val_pred: list[np.ndarray] = []

    def _forward(self, batch):
        return self.module.classification_loss(
            batch, self.gene_selection, self.n_genes, self.label_smoothing, self.token_dropout
        )

    def training_step(self, batch, batch_idx):
        loss, logits, labels, labelled = self._forward(batch)
        n = int(labelled.sum())
        self._log("classification_loss_train", loss.detach(), max(n, 1), prog_bar=True)
        if n:
            acc = (logits[labelled].argmax(1) == labels[labelled]).float().mean()
            self._log("accuracy_train", acc, n)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, labels, labelled = self._forward(batch)
        n = int(labelled.sum())
        if not n:
            return
        self._log("classification_loss_validation", loss, n)
        self._val_true.append(labels[labelled].cpu().numpy())
        self._val_pred.append(logits[labelled].argmax(1).cpu().numpy())

    def on_validation_epoch_end(self):
        if not self._val_true:
            return
        y, p = np.concatenate(self._val_true), np.concatenate(self._val_pred)
        self._val_true, self._val_pred = [], []
        macro_f1 = float(f1_score(y, p, average="macro", labels=np.unique(y), zero_division=0))
        self.log("f1_macro_validation", macro_f1, on_epoch=True)
        self.log("accuracy_validation", float((y == p).mean()), on_epoch=True)
        if self.trainer.sanity_checking:
            return
        if self.keep_best and macro_f1 >= self.best_score:
            self.best_score, self.best_epoch = macro_f1, self.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the best epoch so far in resumable checkpoints."""
        checkpoint["scrobust_best"] = {
            "score": float(self.best_score),
            "epoch": -1 if self.best_epoch is None else int(self.best_epoch),
            "state": self.best_state,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the best epoch so far from a resumable checkpoint."""
        best = checkpoint.get("scrobust_best")
        if best is not None:
            self.best_score = best["score"]
            self.best_epoch = None if best["epoch"] < 0 else best["epoch"]
            self.best_state = best["state"]

    def restore_best(self) -> bool:
        """Load the weights of the best validation epoch; ``True`` if there were any."""
        if self.best_state is None:
            return False
        self.module.load_state_dict(copy.deepcopy(self.best_state))
        logger.info(
            "Restored the weights of epoch %d (validation macro-F1 %.3f).", self.best_epoch + 1, self.best_score
        )
        return True
