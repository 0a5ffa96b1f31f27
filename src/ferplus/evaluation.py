"""Evaluating a trained network (checkpoint or ONNX export) on a prepared split: the work behind ``evaluate.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from .data import EvalSet, read_folder
from .errors import FerplusError
from .fer_format import LABEL_FILE, SPLIT_FOLDERS, canonical_split
from .fileio import refuse_input, write_json
from .metrics import PERCENT, format_confusion, summarize
from .runtime import confusion_matrix
from .checkpoint import INFO_KEYS
from .scorers import is_onnx, load_scorer
from .settings import EVAL_BATCH_SIZE

PathLike = Union[str, os.PathLike]


def result_paths(output: PathLike, model_path: PathLike, split: str, label: str) -> Dict[str, Path]:
    """Where evaluating ``model_path`` on ``split`` writes: ``eval_<model>_<label>_<split>.json`` and ``.png``.

    The names carry the model file's name (``best``, ``last``, ``best_onnx`` …) and ``label``
    (the data folder's name unless given), so evaluations of different files or on different
    data sit side by side and never replace a run's own files or each other.
    """
    model_path = Path(model_path)
    stem = f"eval_{model_path.stem}{'_onnx' if is_onnx(model_path) else ''}_{label}_{split}"
    output = Path(output)
    return {"json": output / f"{stem}.json", "png": output / f"{stem}.png"}


def evaluation_label(data_folder: PathLike, label: Optional[str] = None) -> str:
    """The label in evaluation file names: ``label`` if given, else the data folder's own name."""
    if label is None:
        label = Path(data_folder).resolve().name
    if not label or label in (".", "..") or any(c in label for c in "/\\\0"):
        raise FerplusError(f"--label {label!r}: give a plain name (no path separators)")
    return label


def evaluate_model_file(
    model_path: PathLike,
    data_folder: PathLike,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
    output: Optional[PathLike] = None,
    label: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint or ``.onnx`` file on a prepared split with majority labels.

    Writes ``eval_<model>_<label>_<split>.json`` (the :func:`ferplus.metrics.summarize` figures
    plus what was evaluated) and the confusion picture ``eval_<model>_<label>_<split>.png`` to
    ``output`` (default: the model file's folder; ``label`` defaults to the data folder's name;
    see :func:`result_paths`) and returns the JSON's contents. ``split`` is ``train``, ``val``
    or ``test`` (``valid`` is read as ``val``). ONNX files run with onnxruntime on the CPU.
    """
    split = canonical_split(split)
    if split not in SPLIT_FOLDERS:
        raise FerplusError(f"--split {split}: choose one of {', '.join(SPLIT_FOLDERS)}")
    if batch_size < 1:
        raise FerplusError(f"--batch-size {batch_size}: must be at least 1")
    model_path = Path(model_path)
    folder = Path(data_folder) / SPLIT_FOLDERS[split]
    output = Path(output) if output is not None else model_path.parent
    paths = result_paths(output, model_path, split, evaluation_label(data_folder, label))
    for path in paths.values():
        refuse_input(path, [model_path, folder / LABEL_FILE])

    # Load the model before the data: a wrong model path should fail fast.
    scorer, info = load_scorer(model_path, device)
    eval_set = EvalSet(read_folder(folder), info["device"])
    confusion = confusion_matrix(scorer, eval_set.batches(batch_size)).cpu().numpy()
    result: Dict[str, Any] = {**info, "split": split, "data_folder": str(folder), **summarize(confusion)}
    write_json(paths["json"], result)
    from .plots import plot_confusion_matrix  # matplotlib is imported only to draw

    plot_confusion_matrix(confusion, paths["png"], title=_title(result))
    result["written"] = {kind: str(path) for kind, path in paths.items()}
    return result


def _title(result: Dict[str, Any]) -> str:
    """Picture title: which model, trained how, on which split."""
    what = " ".join(str(result[k]) for k in ("model", "mode") if k in result) or Path(result["model_file"]).name
    return f"{what} ({result['format']}), {result['split']} split"


def format_report(result: Dict[str, Any]) -> str:
    """The readable report of :func:`evaluate_model_file`: accuracy, then the confusion table and per-class accuracy."""
    lines = [
        f"model: {result['model_file']} ({result['format']}"
        + "".join(f", {k} {result[k]}" for k in INFO_KEYS if k in result)
        + ")",
        f"data: {result['data_folder']} ({result['num_images']} majority-labelled images)",
        f"accuracy: {PERCENT * result['accuracy']:.2f}%",
        "",
        format_confusion(np.asarray(result["confusion_matrix"])),
        "",
    ]
    lines += [f"wrote {path}" for path in result.get("written", {}).values()]
    return "\n".join(lines)
