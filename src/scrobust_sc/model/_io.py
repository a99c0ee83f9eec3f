"""Model files: weights in safetensors, everything else in plain JSON; atomic writes.

Nothing here unpickles: loading a model never executes code from the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from scrobust_sc._files import staged_file
from scrobust_sc.train._checkpoint import history_from_json, history_to_json

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_NAME = "scrobust-sc"
FORMAT_VERSION = 1


def _encode(obj):
    """JSON-encode numpy arrays, scalars and pandas objects found in a registry."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": [_encode(v) for v in obj.tolist()], "dtype": str(obj.dtype)}
    if isinstance(obj, pd.Index):
        return {"__ndarray__": [_encode(v) for v in obj.tolist()], "dtype": "object"}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def _decode(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = obj["dtype"]
            return np.asarray(obj["__ndarray__"], dtype=object if dtype.startswith(("<U", "|S", "object")) else dtype)
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_saved_model(dir_path: Path, *, fix: str = "pass overwrite=True to replace it") -> None:
    """Raise ``FileExistsError`` when ``dir_path`` already holds a saved model (before any training, or at saving)."""
    if (dir_path / META_FILE).exists() or (dir_path / WEIGHTS_FILE).exists():
        raise FileExistsError(f"A model is already saved in {dir_path}; {fix}.")


def save_model_files(model, dir_path: Path, *, overwrite: bool = False) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``dir_path``, renamed into place last.

    Only an interruption in the instant between the two renames leaves new weights beside the
    old ``model.json``; loading then refuses them (checksum), it never loads a mix.
    """
    meta_path, weights_path = dir_path / META_FILE, dir_path / WEIGHTS_FILE
    if not overwrite:
        refuse_saved_model(dir_path)
    dir_path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    # Both files are written and checksummed beside the old ones first, then renamed into place:
    # an interruption before the renames leaves the previous model whole.
    staged_weights = staged_file(weights_path, lambda tmp: save_file(state, tmp))
    try:
        meta_text = json.dumps(_metadata(model, _sha256(staged_weights)), indent=1)
        staged_meta = staged_file(meta_path, lambda tmp: Path(tmp).write_text(meta_text))
    except BaseException:
        staged_weights.unlink(missing_ok=True)
        raise
    os.replace(staged_weights, weights_path)
    os.replace(staged_meta, meta_path)


def _metadata(model, weights_sha256: str) -> dict:
    """The ``model.json`` of ``model``, whose weights file has checksum ``weights_sha256``."""
    from scrobust_sc import __version__

    attributes = {
        "cell_types_": list(model.cell_types_),
        "train_params_": model.train_params_,
        "is_trained_": bool(model.is_trained_),
        "is_pretrained_": bool(getattr(model, "is_pretrained_", False)),
        "is_fine_tuned_": bool(getattr(model, "is_fine_tuned_", False)),
    }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_class": type(model).__name__,
        "init_params": model.init_params_["non_kwargs"],
        "gene_names": list(model.gene_names_),
        "registry": _encode(model.registry_),
        "attributes": _encode(attributes),
        "history": history_to_json(model.history_),
        "weights_sha256": weights_sha256,
    }


def load_model_files(dir_path: Path, *, expected_class: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and check a saved model; clear errors for every way the files can be wrong."""
    if not dir_path.is_dir():
        raise FileNotFoundError(f"No model folder at {dir_path}.")
    meta_path, weights_path = dir_path / META_FILE, dir_path / WEIGHTS_FILE
    if not meta_path.exists():
        if (dir_path / "model.pt").exists():
            raise ValueError(
                f"{dir_path} holds a scvi-tools 'model.pt' (pickle), not a scrobust-sc model. scrobust-sc never "
                "unpickles files; load it with the scvi-tools class that saved it."
            )
        raise FileNotFoundError(f"{dir_path} has no {META_FILE}: not a scrobust-sc model folder.")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON (corrupted or not a scrobust-sc model): {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path} is not a scrobust-sc model file.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{dir_path} was saved in format {meta['format_version']} by scrobust-sc {meta.get('package_version')}; "
            "upgrade scrobust-sc to load it."
        )
    if meta.get("model_class") != expected_class:
        raise ValueError(
            f"{dir_path} holds a {meta.get('model_class')} model, not {expected_class}: load it with "
            f"{meta.get('model_class')}.load."
        )
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path} is missing: the save was interrupted or the folder is incomplete.")
    if meta.get("weights_sha256") and _sha256(weights_path) != meta["weights_sha256"]:
        raise ValueError(f"{weights_path} does not match {META_FILE} (checksum differs): the file is corrupted.")
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{weights_path} cannot be read as safetensors (corrupted?): {err}") from None
    for key in ("registry", "attributes", "init_params", "gene_names"):
        if key not in meta:
            raise ValueError(f"{meta_path} lacks {key!r}: the file is incomplete or was edited. Save the model again.")
    meta["registry"] = _decode(meta["registry"])
    meta["attributes"] = _decode(meta["attributes"])
    meta["attributes"]["history_"] = history_from_json(meta.get("history", {}))
    _check_gene_list(meta, meta_path)
    return meta, state


def _check_gene_list(meta: dict, meta_path: Path) -> None:
    """Refuse a ``model.json`` whose gene list no longer matches its registry (an edited file)."""
    stats = meta["registry"].get("field_registries", {}).get("X", {}).get("summary_stats", {})
    n_vars = stats.get("n_vars")
    if n_vars is not None and len(meta["gene_names"]) != n_vars:
        raise ValueError(
            f"{meta_path} lists {len(meta['gene_names'])} genes, but its registry was set up on {n_vars}: the file "
            "was edited or is corrupted (only the weights are checksummed). Save the model again."
        )
