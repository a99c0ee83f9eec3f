"""Summaries of tidy benchmark results: a Markdown table and the paper-style plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Metrics shown in the summary table, per protocol
HEADLINE = {
    "novel": ["unknown_accuracy", "unknown_auroc", "known_f1_macro", "known_f1_macro_no_rejection", "known_rejected"],
    "default": ["f1_macro", "accuracy", "f1_weighted"],
}


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over splits of the headline metrics, and mean seconds.

    Examples
    --------
    >>> table = summarize(results)  # doctest: +SKIP
    """
    keys = ["dataset", "protocol", "dropout", "method"]
    scored = results[results["metric"] != "error"]
    wanted = set(HEADLINE["novel"]) | set(HEADLINE["default"])
    scored = scored[scored["metric"].isin(wanted)]
    stats = scored.groupby([*keys, "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    seconds = (
        scored.drop_duplicates([*keys, "repeat", "fold"]).groupby(keys, sort=False)["seconds"].mean().rename("seconds")
    )
    wide = stats.pivot_table(index=keys, columns="metric", values=["mean", "std"], sort=False)
    wide.columns = [f"{metric}" if stat == "mean" else f"{metric}_std" for stat, metric in wide.columns]
    wide["n_splits"] = stats.groupby(keys, sort=False)["count"].max()
    errors = results[results["metric"] == "error"].groupby(keys, sort=False).size().rename("errors")
    return wide.join(seconds).join(errors).fillna({"errors": 0}).reset_index()


def markdown_table(results: pd.DataFrame, digits: int = 3) -> str:
    """The summary as a Markdown table: ``mean ± std`` per metric, seconds per split.

    Examples
    --------
    >>> print(markdown_table(results))  # doctest: +SKIP
    """
    summary = summarize(results)
    blocks = []
    for protocol, part in summary.groupby("protocol", sort=False):
        metrics = [m for m in HEADLINE.get(protocol, HEADLINE["default"]) if m in part.columns]
        header = ["dataset", "dropout", "method", *metrics, "splits", "s/split"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in part.iterrows():
            cells = [str(row["dataset"]), f"{row['dropout']:g}", str(row["method"])]
            for m in metrics:
                std = row.get(f"{m}_std", np.nan)
                cells.append(f"{row[m]:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else ""))
            cells += [f"{row['n_splits']:.0f}", f"{row['seconds']:.0f}"]
            if row["errors"]:
                cells[-1] += f" ({row['errors']:.0f} failed)"
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append(f"**{protocol}**\n\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_benchmark(results: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Paper-style figures written to ``out_dir``; returns their paths.

    ``f1_macro.png``: macro-F1 per dataset and method (bars, fold spread as error bars);
    ``f1_vs_dropout.png``: macro-F1 against additional dropout, when several rates were
    run; ``class_accuracy_<dataset>.png``: accuracy of each cell type per method (rare
    types first); ``novel_<dataset>.png``: share of each held-out type called Unknown.

    Examples
    --------
    >>> paths = plot_benchmark(results, "results/")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    scored = results[results["metric"] != "error"]

    f1 = scored[(scored["metric"] == "f1_macro") & (scored["dropout"] == 0)]
    if not f1.empty:
        stats = f1.groupby(["dataset", "method"], sort=False)["value"].agg(["mean", "std"]).unstack("method")
        fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(stats) * max(1, stats["mean"].shape[1] / 3), 3.5))
        stats["mean"].plot.bar(yerr=stats["std"].fillna(0), ax=ax, capsize=2, rot=0)
        ax.set_ylabel("macro-F1")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="lower right")
        paths.append(_save(fig, out / "f1_macro.png"))

    drop = scored[scored["metric"] == "f1_macro"]
    if drop["dropout"].nunique() > 1:
        curves = drop.groupby(["dataset", "method", "dropout"])["value"].mean().reset_index()
        datasets = curves["dataset"].unique()
        fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.2), squeeze=False)
        for ax, (name, part) in zip(axes[0], curves.groupby("dataset", sort=False), strict=True):
            for method, line in part.groupby("method", sort=False):
                ax.plot(line["dropout"], line["value"], marker="o", label=method)
            ax.set(title=name, xlabel="additional dropout", ylabel="macro-F1")
        axes[0][0].legend(fontsize=8)
        paths.append(_save(fig, out / "f1_vs_dropout.png"))

    per_class = scored[scored["metric"].str.startswith("class_accuracy:") & (scored["dropout"] == 0)]
    for name, part in per_class.groupby("dataset", sort=False):
        grid = part.assign(type=part["metric"].str.split(":", n=1).str[1])
        grid = grid.groupby(["method", "type"])["value"].mean().unstack("type")
        grid = grid[grid.mean().sort_values().index]
        fig, ax = plt.subplots(figsize=(1 + 0.5 * grid.shape[1], 0.8 + 0.4 * grid.shape[0]))
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
        fig.colorbar(image, ax=ax, label="accuracy")
        paths.append(_save(fig, out / f"class_accuracy_{name}.png"))

    novel = scored[scored["metric"] == "unknown_accuracy"]
    for name, part in novel.groupby("dataset", sort=False):
        grid = part.assign(type=part["fold"].str.removeprefix("novel "))
        grid = grid.groupby(["type", "method"])["value"].mean().unstack("method")
        fig, ax = plt.subplots(figsize=(1.5 + 0.6 * grid.shape[0] * max(1, grid.shape[1] / 2), 3.2))
        grid.plot.bar(ax=ax, rot=60)
        ax.set(ylabel='held-out cells called "Unknown"', xlabel="held-out type", ylim=(0, 1.05))
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"novel_{name}.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(out_dir: str | Path) -> pd.DataFrame:
    """Gather every results CSV in ``out_dir``; write ``summary.md`` and the plots there.

    Runs of several datasets and protocols written to one folder make one report.

    Examples
    --------
    >>> results = write_report("benchmark_results/")  # doctest: +SKIP
    """
    out = Path(out_dir)
    frames = [pd.read_csv(path, keep_default_na=False, na_values=[""]) for path in sorted(out.glob("*.csv"))]
    if not frames:
        raise FileNotFoundError(f"No benchmark results (*.csv) in {out}.")
    results = pd.concat(frames, ignore_index=True)
    (out / "summary.md").write_text(markdown_table(results))
    plot_benchmark(results, out)
    return results
