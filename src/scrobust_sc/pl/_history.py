"""Training history plot."""

from __future__ import annotations

import matplotlib.pyplot as plt


def history(model, *, keys: list[str] | None = None, ax=None, save: str | None = None):
    """Plot the logged training curves (losses and metrics per epoch).

    Parameters
    ----------
    model
        A trained :class:`~scrobust_sc.model.SCRobust`.
    keys
        History keys to plot (default: all).
    ax
        Matplotlib axes to draw on.
    save
        Path of an image file to write.

    Returns
    -------
    The matplotlib axes.

    Examples
    --------
    >>> scrobust.pl.history(model, save="history.png")  # doctest: +SKIP
    """
    hist = model.history or {}
    keys = keys or [k for k in hist if k not in ("lr-AdamW",)]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        frame = hist[key]
        ax.plot(frame.index, frame.iloc[:, 0], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.legend(fontsize="small")
    if save:
        ax.figure.savefig(save, dpi=120, bbox_inches="tight")
    return ax
