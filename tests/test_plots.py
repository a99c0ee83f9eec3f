import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

import scrobust_sc as scrobust  # noqa: E402

from .conftest import demo_subset, tiny_model  # noqa: E402

SETS = {
    "monocyte": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1"],
    "B": ["MS4A1", "CD79A", "CD79B"],
    "NK": ["NKG7", "GNLY"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread_and_close():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    """150 demo cells over 300 frequent genes plus the genes of SETS (raw counts)."""
    return demo_subset(150, 300, [g for s in SETS.values() for g in s])


@pytest.fixture(scope="module")
def model(data):
    return tiny_model(data)


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_headless_backend():
    assert matplotlib.get_backend().lower() == "agg"


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_png(data, tmp_path, normalize):
    adata = data.copy()
    rng = np.random.default_rng(0)
    truth = adata.obs["cell_type_coarse"].astype(str).to_numpy()
    pred = np.where(rng.random(adata.n_obs) < 0.8, truth, "Unknown")
    adata.obs["pred"] = pd.Categorical(pred)
    path = tmp_path / "confusion.png"
    ax = scrobust.pl.confusion(adata, true="cell_type_coarse", pred="pred", normalize=normalize, save=str(path))
    assert isinstance(ax, Axes)
    assert_png(path)
    # rows: known types in their category order; columns: predictions; counts annotated
    assert [t.get_text() for t in ax.get_yticklabels()] == list(adata.obs["cell_type_coarse"].cat.categories)
    texts = [int(t.get_text()) for t in ax.texts]
    assert sum(texts) == adata.n_obs
    shown = ax.images[0].get_array()
    if normalize:
        np.testing.assert_allclose(np.asarray(shown).sum(1), 1.0)


def test_confusion_on_given_axes_and_errors(data):
    adata = data.copy()
    adata.obs["same"] = adata.obs["cell_type_coarse"].astype(str)
    _, ax = plt.subplots()
    assert scrobust.pl.confusion(adata, true="cell_type_coarse", pred="same", ax=ax) is ax
    values = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(np.diag(values), 1.0)
    with pytest.raises(ValueError, match="not a column"):
        scrobust.pl.confusion(adata, true="cell_type_coarse", pred="nope")


@pytest.mark.parametrize(("basis", "color"), [("umap", "cell_type_coarse"), ("tsne", "n_counts"), ("umap", None)])
def test_pathway_embedding_png(data, model, tmp_path, basis, color):
    adata = data.copy()
    adata.obs["n_counts"] = np.asarray(adata.X.sum(1)).ravel()
    path = tmp_path / f"pathways_{basis}.png"
    ax = scrobust.pl.pathway_embedding(adata, model, gene_sets=SETS, basis=basis, color=color, save=str(path))
    assert isinstance(ax, Axes)
    assert_png(path)
    labels = [t.get_text() for t in ax.texts]
    assert labels == list(SETS)  # each pathway point is labelled
    stars = ax.collections[-1]
    assert len(stars.get_offsets()) == len(SETS)


def test_pathway_labels_do_not_overlap(data, model):
    """Labels of pathway stars that land on top of each other are spread apart."""
    sets = {f"{name} {k}": genes for name, genes in SETS.items() for k in range(3)}  # near-identical vectors
    ax = scrobust.pl.pathway_embedding(data, model, gene_sets=sets, basis="umap")
    ax.figure.canvas.draw()
    boxes = [t.get_bbox_patch().get_window_extent() for t in ax.texts]  # the label boxes, not their lines
    assert len(boxes) == len(sets)
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps, overlaps


def test_spread_labels_keeps_the_gap_and_leaves_far_points():
    points = np.array([[0.0, 0.0], [0.0, 0.0], [0.2, 0.1], [10.0, 10.0]])
    out = scrobust.pl.spread_labels(points, min_distance=np.array([1.0, 0.5]))
    gaps = np.linalg.norm((out[:, None] - out[None]) / np.array([1.0, 0.5]), axis=2)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() >= 0.99
    np.testing.assert_allclose(out[3], points[3])  # a lone label stays on its point
    again = scrobust.pl.spread_labels(points, min_distance=np.array([1.0, 0.5]))
    np.testing.assert_array_equal(again, out)  # deterministic


def test_confusion_draws_cell_borders(data):
    adata = data.copy()
    adata.obs["same"] = adata.obs["cell_type_coarse"].astype(str)
    ax = scrobust.pl.confusion(adata, true="cell_type_coarse", pred="same")
    n_types = adata.obs["cell_type_coarse"].nunique()
    np.testing.assert_allclose(ax.get_xticks(minor=True), np.arange(-0.5, n_types))
    assert all(tick.gridline.get_visible() for tick in ax.xaxis.get_minor_ticks())


def test_history_panels_group_stages():
    keys = ["train_loss", "contrastive_loss_train", "classification_loss_validation", "accuracy_train", "lr-AdamW"]
    panels = scrobust.pl.history_panels(keys)
    assert panels == {
        "pre-training loss": ["train_loss", "contrastive_loss_train"],
        "fine-tuning loss": ["classification_loss_validation"],
        "fine-tuning accuracy and macro-F1": ["accuracy_train"],
        "other": ["lr-AdamW"],
    }


def test_history_draws_a_metric_logged_every_few_epochs_as_a_line():
    """knn_accuracy is NaN between evaluations: the line joins the evaluated epochs."""
    knn = pd.DataFrame({"knn_accuracy": [np.nan, 0.5, np.nan, 0.7]}, index=pd.Index(range(4), name="epoch"))
    trained = type("Trained", (), {"history": {"knn_accuracy": knn}})()
    (ax,) = scrobust.pl.history(trained)
    assert ax.get_title() == "pre-training kNN accuracy"
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [1, 3])
    np.testing.assert_array_equal(line.get_ydata(), [0.5, 0.7])
    plt.close("all")


def test_history_needs_a_trained_model_and_known_keys():
    curve = pd.DataFrame({"train_loss": [2.0, 1.0]}, index=pd.Index([0, 1], name="epoch"))
    trained = type("Trained", (), {"history": {"train_loss": curve}})()
    assert [ax.get_title() for ax in scrobust.pl.history(trained)] == ["pre-training loss"]
    with pytest.raises(ValueError, match="Not in model.history"):
        scrobust.pl.history(trained, keys=["nope"])
    blank = type("Blank", (), {"history": None})()
    with pytest.raises(ValueError, match="no training history"):
        scrobust.pl.history(blank)


def test_pathway_embedding_rejects_other_basis(data, model):
    with pytest.raises(ValueError, match="basis"):
        scrobust.pl.pathway_embedding(data, model, gene_sets=SETS, basis="pca")


@pytest.mark.parametrize("kind", ["heatmap", "dotplot", "matrixplot"])
def test_attention_markers_png(data, model, tmp_path, kind):
    adata = data.copy()
    scrobust.tl.marker_genes(adata, model, groupby="cell_type_coarse", n_genes=4, n_input_genes=100)
    path = tmp_path / f"markers_{kind}.png"
    ax = scrobust.pl.attention_markers(adata, kind=kind, save=str(path))
    assert isinstance(ax, Axes)
    assert_png(path)
    assert "dendrogram_cell_type_coarse" not in adata.uns  # no side effect on the user's AnnData


def test_attention_markers_log_normalises_counts_for_display(data, model):
    from scrobust_sc.pl._plots import _marker_view

    adata = data.copy()
    scrobust.tl.marker_genes(adata, model, groupby="cell_type_coarse", n_genes=3, n_input_genes=100)
    view = _marker_view(adata, "scrobust_markers", "cell_type_coarse", None, None)
    gene = view.var_names[0]
    counts = adata.X.toarray()
    expected = np.log1p(counts[:, adata.var_names.get_loc(gene)] / counts.sum(1) * 1e4)
    np.testing.assert_allclose(view[:, gene].X.ravel(), expected, rtol=1e-5)
    raw = _marker_view(adata, "scrobust_markers", "cell_type_coarse", None, False)
    np.testing.assert_array_equal(raw[:, gene].X.ravel(), counts[:, adata.var_names.get_loc(gene)])


def test_attention_markers_needs_markers(data):
    with pytest.raises(ValueError, match="marker_genes"):
        scrobust.pl.attention_markers(data.copy())
    with pytest.raises(ValueError, match="kind"):
        adata = data.copy()
        adata.uns["scrobust_markers"] = {"names": np.zeros(1), "params": {"groupby": "cell_type_coarse"}}
        scrobust.pl.attention_markers(adata, kind="violin")


def test_neighbors_beyond_scanpys_brute_force_limit(monkeypatch):
    # From 8,192 cells on scanpy switches to pynndescent, whose 0.7 release returns a
    # csr_array that scanpy 1.11 cannot read ('csr_array' has no 'getnnz'). The approximate
    # search is replaced by an exact one returning a csr_array, as pynndescent 0.7 does
    # (compiling pynndescent takes a minute); the graph must still build and be right.
    import anndata as ad
    import pynndescent
    import scipy.sparse as sp
    from sklearn.neighbors import KNeighborsTransformer

    from scrobust_sc._neighbors import BRUTE_FORCE_LIMIT, neighbors

    def exact_as_array(self, X, y=None, **kwargs):
        exact = KNeighborsTransformer(n_neighbors=self.n_neighbors - 1, algorithm="brute")
        return sp.csr_array(exact.fit_transform(X))

    monkeypatch.setattr(pynndescent.PyNNDescentTransformer, "fit_transform", exact_as_array)
    rng = np.random.default_rng(0)
    n = BRUTE_FORCE_LIMIT + 100
    centres = rng.normal(scale=10.0, size=(2, 8))
    group = np.arange(n) % 2
    adata = ad.AnnData(obsm={"X_e": (centres[group] + rng.normal(size=(n, 8))).astype(np.float32)})
    neighbors(adata, use_rep="X_e", n_neighbors=10)
    graph = adata.obsp["distances"].tocsr()
    assert graph.shape == (n, n)
    assert (np.diff(graph.indptr) >= 9).all()  # every cell has its k - 1 neighbours (or k)
    rows, cols = graph.nonzero()
    assert (group[rows] == group[cols]).all()  # all from the cell's own well-separated group


def test_pathway_embedding_draws_cells_without_a_colour_as_na(data, model):
    adata = data.copy()
    adata.obs["group"] = adata.obs["cell_type_coarse"].astype(object)
    adata.obs.loc[adata.obs_names[:10], "group"] = np.nan
    adata.obs["group"] = adata.obs["group"].astype("category")
    ax = scrobust.pl.pathway_embedding(adata, model, gene_sets=SETS, basis="umap", color="group")
    drawn = sum(len(c.get_offsets()) for c in ax.collections[:-1])  # the last collection: the pathway stars
    assert drawn == adata.n_obs
    assert "NA" in [t.get_text() for t in ax.get_legend().get_texts()]


def _with_unknown_labels(data):
    from scrobust_sc.tl._labels import write_label_column

    adata = data.copy()
    labels = adata.obs["cell_type_coarse"].astype(str).to_numpy().copy()
    labels[::4] = "Unknown"
    write_label_column(adata, "scrobust_label", labels, [*adata.obs["cell_type_coarse"].cat.categories, "Unknown"])
    return adata


@pytest.mark.parametrize("stored", [True, False])
def test_pathway_embedding_draws_unknown_cells_light_grey(data, model, stored):
    """Label colours as scanpy draws them: the stored ones, or scanpy's defaults; "Unknown" light grey either way."""
    from matplotlib.colors import to_rgba

    from scrobust_sc.tl._labels import label_colors

    adata = _with_unknown_labels(data)
    categories = list(adata.obs["scrobust_label"].cat.categories)
    expected = dict(zip(categories, label_colors(categories), strict=True))
    if stored:  # the user's own colours, as after sc.pl.umap(..., palette=...)
        mine = ["#000000", "#222222", "#444444", "#666666", "#888888", "#aaaaaa", "#cccccc", "#eeeeee"]
        adata.uns["scrobust_label_colors"] = mine[: len(categories) - 1] + [label_colors(["Unknown"])[0]]
        expected = dict(zip(categories, adata.uns["scrobust_label_colors"], strict=True))
    else:
        del adata.uns["scrobust_label_colors"]
    ax = scrobust.pl.pathway_embedding(adata, model, gene_sets=SETS, basis="umap", color="scrobust_label")
    drawn = {c.get_label(): c.get_facecolor()[0] for c in ax.collections[:-1]}
    assert set(drawn) == set(categories)
    np.testing.assert_allclose(drawn["Unknown"], to_rgba("lightgray"))
    for category in categories:
        np.testing.assert_allclose(drawn[category], to_rgba(expected[category]))


def test_attention_markers_colour_groups_as_scanpy_with_unknown_light_grey(data, model, tmp_path):
    from matplotlib.colors import to_hex

    from scrobust_sc.pl._plots import _marker_view

    adata = _with_unknown_labels(data)
    scrobust.tl.marker_genes(adata, model, groupby="scrobust_label", n_genes=3, n_input_genes=100)
    view = _marker_view(adata, "scrobust_markers", "scrobust_label", None, None)
    assert list(view.uns["scrobust_label_colors"]) == list(adata.uns["scrobust_label_colors"])
    colours = dict(zip(view.obs["scrobust_label"].cat.categories, view.uns["scrobust_label_colors"], strict=True))
    assert colours["Unknown"] == to_hex("lightgray")
    path = tmp_path / "markers_heatmap.png"
    scrobust.pl.attention_markers(adata, kind="heatmap", save=str(path))
    assert_png(path)
    assert list(adata.uns["scrobust_label_colors"]) == list(colours.values())  # the user's AnnData untouched
