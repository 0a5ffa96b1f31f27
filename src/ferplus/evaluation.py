"""Evaluating a trained network (checkpoint or ONNX export) on a prepared split: the work behind ``evaluate.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from .checkpoint import write_json
from .data import SPLIT_FOLDERS, EvalSet, read_folder
from .engine import EVAL_BATCH_SIZE
from .errors import FerplusError
from .inference import INFO_KEYS, Scorer, load_scorer
from .metrics import PERCENT, confusion_matrix, format_confusion, summarize
from .plots import plot_confusion_matrix

PathLike = Union[str, os.PathLike]


def result_paths(output: PathLike, split: str) -> Dict[str, Path]:
    """Where an evaluation of ``split`` writes its files: ``eval_<split>.json`` and ``confusion_<split>.png``."""
    output = Path(output)
    return {"json": output / f"eval_{split}.json", "png": output / f"confusion_{split}.png"}


def scorer_confusion(scorer: Scorer, eval_set: EvalSet, batch_size: int) -> np.ndarray:
    """The (8, 8) confusion matrix of a scorer (checkpoint or ONNX file) on ``eval_set``, batch by batch."""
    predictions, labels = [], []
    for inputs, batch_labels in eval_set.batches(batch_size):
        predictions.append(scorer(inputs.cpu().numpy()).argmax(axis=1))
        labels.append(batch_labels.cpu().numpy())
    if not labels:
        return confusion_matrix(np.zeros(0), np.zeros(0))
    return confusion_matrix(np.concatenate(labels), np.concatenate(predictions))


def evaluate_model_file(
    model_path: PathLike,
    data_folder: PathLike,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
    output: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint or ``.onnx`` file on a prepared split with majority labels.

    Writes ``eval_<split>.json`` (the :func:`ferplus.metrics.summarize` figures plus what was
    evaluated) and ``confusion_<split>.png`` to ``output`` (default: the model file's folder)
    and returns the JSON's contents. ONNX files run with onnxruntime on the CPU.
    """
    if split not in SPLIT_FOLDERS:
        raise FerplusError(f"--split {split}: choose one of {', '.join(SPLIT_FOLDERS)}")
    if batch_size < 1:
        raise FerplusError(f"--batch-size {batch_size}: must be at least 1")
    model_path = Path(model_path)
    folder = Path(data_folder) / SPLIT_FOLDERS[split]
    output = Path(output) if output is not None else model_path.parent

    # Load the model before the data: a wrong model path should fail fast.
    scorer, info = load_scorer(model_path, device)
    eval_set = EvalSet(read_folder(folder), info["device"])
    confusion = scorer_confusion(scorer, eval_set, batch_size)
    result: Dict[str, Any] = {**info, "split": split, "data_folder": str(folder), **summarize(confusion)}
    paths = result_paths(output, split)
    write_json(paths["json"], result)
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
