"""Training history plot: one panel per stage and kind of curve."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

#: Panel title -> whether a history key belongs to it (checked in this order).
PANELS: dict[str, Callable[[str], bool]] = {
    "pre-training loss": lambda key: (
        key in ("train_loss", "validation_loss") or key.startswith(("contrastive_", "expression_"))
    ),
    "fine-tuning loss": lambda key: key.startswith("classification_loss"),
    "pre-training kNN accuracy": lambda key: key == "knn_accuracy",
    "fine-tuning accuracy and macro-F1": lambda key: key.startswith(("accuracy_", "f1_")),
}


def history_panels(keys: Sequence[str]) -> dict[str, list[str]]:
    """Group history keys into panels: pre-training losses, fine-tuning losses, metrics.

    Keys that fit no panel (learning rate, custom metrics) go to a panel ``"other"``;
    empty panels are left out.

    Parameters
    ----------
    keys
        Names of logged curves, e.g. ``list(model.history)``.

    Returns
    -------
    Panel title -> its keys, in the order given.

    Examples
    --------
    >>> from scrobust_sc.pl import history_panels
    >>> panels = history_panels(["contrastive_loss_train", "classification_loss_train", "f1_macro_validation"])
    >>> panels["pre-training loss"], panels["fine-tuning accuracy and macro-F1"]
    (['contrastive_loss_train'], ['f1_macro_validation'])
    """
    panels: dict[str, list[str]] = {title: [] for title in [*PANELS, "other"]}
    for key in keys:
        title = next((t for t, belongs in PANELS.items() if belongs(key)), "other")
        panels[title].append(key)
    return {title: names for title, names in panels.items() if names}


def history(
    model,
    *,
    keys: list[str] | None = None,
    axes: Sequence[Axes] | None = None,
    save: str | None = None,
) -> list[Axes]:
    """Plot the logged training curves per epoch, one panel per stage and kind.

    Pre-training losses (contrastive, expression, total), fine-tuning losses and
    fine-tuning accuracy / macro-F1 each get their own panel and y axis, so curves on
    different scales stay readable. Training curves are solid, validation curves dashed.

    Parameters
    ----------
    model
        A trained :class:`~scrobust_sc.model.SCRobust`.
    keys
        History keys to plot (default: all but the learning rate).
    axes
        Matplotlib axes to draw on, one per panel (see :func:`history_panels`).
    save
        Path of an image file to write.

    Returns
    -------
    The matplotlib axes, one per panel.

    Examples
    --------
    >>> scrobust.pl.history(model, save="history.png")  # doctest: +SKIP
    """
    hist = model.history or {}
    if not hist:
        raise ValueError("The model has no training history: train it first (`model.pretrain()` / `model.train()`).")
    keys = keys or [k for k in hist if not k.startswith("lr-")]
    unknown = [k for k in keys if k not in hist]
    if unknown:
        raise ValueError(f"Not in model.history: {unknown}. Available: {sorted(hist)}.")
    panels = history_panels(keys)
    if axes is None:
        _, grid = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        axes = list(grid[0])
    elif len(axes) != len(panels):
        raise ValueError(f"Got {len(axes)} axes for {len(panels)} panels ({list(panels)}).")
    for ax, (title, names) in zip(axes, panels.items(), strict=True):
        for key in names:
            frame = hist[key]
            values = frame.iloc[:, 0].to_numpy(dtype=float)
            logged = np.isfinite(values)  # metrics logged every few epochs (knn_accuracy) are NaN between
            style = "--" if "validation" in key else "-"
            ax.plot(np.asarray(frame.index)[logged], values[logged], style, marker="o", markersize=2.5, label=key)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    axes[0].figure.tight_layout()
    if save:
        axes[0].figure.savefig(save, dpi=120, bbox_inches="tight")
    return list(axes)
