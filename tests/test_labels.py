"""Label columns (``write_label_column``): categories, and the colours scanpy draws them in."""

import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402
from matplotlib.colors import to_hex, to_rgba  # noqa: E402

from scrobust_sc.tl._labels import label_colors, write_label_column  # noqa: E402

GREY = to_hex("lightgray")  # scanpy's colour of unassigned cells (na_color)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _labels(n_types: int, n_cells: int = 300, unknown: bool = True) -> tuple[np.ndarray, list[str]]:
    types = [f"type {i:03d}" for i in range(n_types)]
    labels = np.array(types * (n_cells // n_types + 1))[:n_cells]
    if unknown:
        labels[::7] = "Unknown"
    return labels, [*types, "Unknown"]


def _scanpy_default(adata: ad.AnnData, key: str) -> list[str]:
    """The colours scanpy itself picks for ``obs[key]`` when none are stored."""
    plain = ad.AnnData(obs=adata.obs[[key]].copy())
    sc.pl._utils._set_default_colors_for_categorical_obs(plain, key)
    return list(plain.uns[f"{key}_colors"])


@pytest.mark.parametrize("n_types", [3, 12, 25, 60, 120])
def test_unknown_is_light_grey_and_the_others_get_scanpys_default_colours(n_types):
    adata = ad.AnnData(np.zeros((300, 1)))
    labels, order = _labels(n_types)
    write_label_column(adata, "scrobust_label", labels, order)
    categories = list(adata.obs["scrobust_label"].cat.categories)
    assert categories[-1] == "Unknown"
    default = _scanpy_default(adata, "scrobust_label")
    expected = [GREY if c == "Unknown" else colour for c, colour in zip(categories, default, strict=True)]
    assert list(adata.uns["scrobust_label_colors"]) == expected


def test_label_colors_follow_the_colour_cycle_scanpy_reads():
    with matplotlib.rc_context({"axes.prop_cycle": matplotlib.cycler(color=["red", "blue"])}):
        assert label_colors(["a", "Unknown"]) == ["#ff0000", GREY]
        assert label_colors(["a", "b", "Unknown"])[:2] == list(sc.pl.palettes.default_20[:2])


def test_without_unknown_no_colours_are_written():
    adata = ad.AnnData(np.zeros((300, 1)))
    labels, order = _labels(4, unknown=False)
    write_label_column(adata, "scrobust_label", labels, order)
    assert "scrobust_label_colors" not in adata.uns


def test_stored_colours_are_kept_while_the_categories_stay_and_replaced_when_they_change():
    adata = ad.AnnData(np.zeros((300, 1)))
    labels, order = _labels(4)
    write_label_column(adata, "scrobust_label", labels, order)
    mine = ["#000000", "#111111", "#222222", "#333333", "#444444"]
    adata.uns["scrobust_label_colors"] = mine  # the user's own colours
    write_label_column(adata, "scrobust_label", labels[::-1], order)  # the same categories
    assert list(adata.uns["scrobust_label_colors"]) == mine
    fewer = np.where(labels == "type 003", "type 000", labels)
    write_label_column(adata, "scrobust_label", fewer, order)  # one type fewer: colours by position would shift
    assert list(adata.uns["scrobust_label_colors"]) == label_colors(["type 000", "type 001", "type 002", "Unknown"])
    assert adata.uns["scrobust_label_colors"][-1] == GREY
    write_label_column(adata, "scrobust_label", np.where(fewer == "Unknown", "type 000", fewer), order)
    assert "scrobust_label_colors" not in adata.uns  # no Unknown any more: scanpy picks its own


def test_user_colours_without_unknown_are_kept_while_the_categories_stay():
    adata = ad.AnnData(np.zeros((300, 1)))
    labels, order = _labels(3, unknown=False)
    write_label_column(adata, "scrobust_label", labels, order)
    adata.uns["scrobust_label_colors"] = ["#000000", "#111111", "#222222"]
    write_label_column(adata, "scrobust_label", labels, order)
    assert list(adata.uns["scrobust_label_colors"]) == ["#000000", "#111111", "#222222"]


@pytest.mark.parametrize("key", ["scrobust_label", "scrobust_pathway_label"])
def test_scanpy_draws_unknown_cells_light_grey(key):
    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy().copy()
    labels[::5] = "Unknown"
    order = [*adata.obs["bulk_labels"].cat.categories, "Unknown"]
    write_label_column(adata, key, labels, order)
    stored = list(adata.uns[f"{key}_colors"])
    categories = list(adata.obs[key].cat.categories)
    ax = sc.pl.umap(adata, color=key, show=False)
    assert list(adata.uns[f"{key}_colors"]) == stored  # scanpy kept them
    drawn = ax.collections[0].get_facecolors()  # cells in their order (no cell lacks a label)
    expected = dict(zip(categories, stored, strict=True))
    np.testing.assert_allclose(drawn, [to_rgba(expected[label]) for label in labels])
    unknown = labels == "Unknown"
    np.testing.assert_allclose(drawn[unknown], np.tile(to_rgba("lightgray"), (unknown.sum(), 1)))
    # every other label keeps the colour scanpy would have given it on its own
    plain = adata.copy()
    del plain.uns[f"{key}_colors"]
    sc.pl.embedding(plain, "umap", color=key, show=False)
    scanpys = dict(zip(categories, plain.uns[f"{key}_colors"], strict=True))
    assert {c: expected[c] for c in categories if c != "Unknown"} == {
        c: scanpys[c] for c in categories if c != "Unknown"
    }
