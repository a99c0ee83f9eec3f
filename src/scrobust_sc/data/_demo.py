"""Demo data bundled with the package (no download)."""

from __future__ import annotations

from importlib.resources import files

import anndata as ad


def pbmc_demo() -> ad.AnnData:
    """600 sorted PBMCs (10 types, 60 cells each) with raw UMI counts, 5,505 genes.

    Cut from Zheng et al. 2017's bead-sorted PBMC populations (the paper's "Zheng sorted"
    benchmark): the genes expressed in at least 2% of these cells. Labels in
    ``obs["cell_type"]`` (10 types) and ``obs["cell_type_coarse"]`` (5 types);
    Ensembl IDs in ``var["gene_ids"]``.

    Examples
    --------
    >>> import scrobust_sc as scrobust
    >>> scrobust.data.pbmc_demo().shape
    (600, 5505)
    """
    return ad.read_h5ad(files("scrobust_sc.data").joinpath("files/zheng_sorted_600.h5ad"))
