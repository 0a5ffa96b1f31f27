"""Export a network to ONNX with the interface of the ONNX Model Zoo's "emotion-ferplus" model.

The exported graph takes ``Input3``: float32 ``(N, 1, 64, 64)`` preprocessed crops (the output
of :func:`ferplus.transforms.preprocess`: histogram-equalised to [-1, 1], plane removed,
RMS-normalised), with a dynamic batch size N, and returns ``Plus692_Output_0``: float32
``(N, 8)`` raw scores in :data:`ferplus.labels.EMOTIONS` order (apply a softmax for
probabilities). Every export is checked with the ONNX checker and run with onnxruntime
against PyTorch before it is kept.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import onnx
import torch
from torch import nn

from .errors import FerplusError
from .fer_format import CROP_SIZE
from .fileio import atomic_write, read_regular_file
from .settings import DEFAULT_VERIFY_BATCH, MAX_VERIFY_BATCH
from .scorers import BATCH_AXIS_NAME, INPUT_NAME, OUTPUT_NAME, OnnxModel

PathLike = Union[str, os.PathLike]

OPSET = 17  # supported by every onnxruntime from 1.12 on and by the legacy exporter of torch 2.1+
#: onnxruntime's float32 kernels differ from PyTorch's by rounding only; more means a broken graph.
MAX_ABS_DIFF = 1e-4
VERIFY_SEED = 0


def _verify_batch(size: int) -> torch.Tensor:
    """A fixed batch with the statistics of preprocessed crops (zero mean, unit RMS)."""
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    return torch.randn(size, 1, CROP_SIZE, CROP_SIZE, generator=generator)


def verify_onnx(path: PathLike, model: nn.Module, inputs: torch.Tensor, name: Optional[PathLike] = None) -> float:
    """Check the file with the ONNX checker and compare onnxruntime to ``model`` on ``inputs``.

    The comparison runs on the whole batch and on its first crop alone, so a batch size baked
    into the graph is caught too. Returns the largest absolute score difference; raises
    :class:`FerplusError` if the file is malformed, fails to run, has the wrong output shape or
    differs by more than :data:`MAX_ABS_DIFF`. Messages name ``name`` (default ``path``): the
    file the user asked for, when ``path`` is still a temporary one.
    """
    path = Path(path)
    name = name or path
    try:
        # Checked as a loaded model, not by path: the checker's own file opening fails on a path
        # that is not valid text (a byte like 0xff in a folder's name).
        onnx.checker.check_model(onnx.load_from_string(read_regular_file(path)), full_check=True)
    except Exception as e:  # the checker's errors are not a public type
        raise FerplusError(f"{name}: ONNX checker rejected the export: {e}", exit_code=1) from None
    batches = (inputs, inputs[:1])
    with torch.no_grad():
        expected = [model(batch).float().cpu() for batch in batches]
    if not all(bool(torch.isfinite(scores).all()) for scores in expected):
        raise FerplusError(f"{name}: the network gives non-finite scores (NaN or infinity): not exported")
    diff = 0.0
    try:
        session = OnnxModel(path, name=name)
        for batch, want in zip(batches, expected):
            # Checked batch by batch: a running max() would drop a NaN (max(0.0, nan) is 0.0).
            batch_diff = float(torch.max(torch.abs(session(batch) - want)))
            if not batch_diff <= MAX_ABS_DIFF:  # written this way so that NaN fails too
                raise FerplusError(
                    f"{name}: onnxruntime and PyTorch disagree: max abs difference {batch_diff:.3g} > {MAX_ABS_DIFF:g}"
                )
            diff = max(diff, batch_diff)
    except FerplusError as e:  # the export itself is wrong (a fixed batch, a run error): a failed run
        raise FerplusError(str(e), exit_code=1) from None
    return diff


def export_onnx(
    model: nn.Module,
    path: PathLike,
    verify_batch: int = DEFAULT_VERIFY_BATCH,
    metadata: Optional[Mapping[str, object]] = None,
) -> Dict[str, float]:
    """Export ``model`` to ``path`` with the Model Zoo interface, verified before it is written.

    The graph is exported on the CPU in float32, checked and compared with PyTorch on a batch
    of ``verify_batch`` crops; only then is ``path`` replaced atomically, so a failed export
    leaves no file behind. ``metadata`` (e.g. the checkpoint's model name, mode and epoch) is
    stored as the file's metadata properties, as strings. Returns ``{"max_abs_diff": ...,
    "verify_batch": ...}``.
    """
    if not 1 <= verify_batch <= MAX_VERIFY_BATCH:
        raise ValueError(f"verify_batch must be in [1, {MAX_VERIFY_BATCH}]")
    path = Path(path)
    # Export a CPU float32 copy in eval mode: dropout must be off, and the caller's model stays as it was.
    model = _cpu_eval_copy(model)
    inputs = _verify_batch(verify_batch)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of one that needs onnxscript;
        # it is the one that works on every supported torch without extra dependencies.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model,
            (inputs,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}},
            opset_version=OPSET,
            dynamo=False,
        )
    data = _with_metadata(buffer.getvalue(), metadata or {})
    result: Dict[str, float] = {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
        result["max_abs_diff"] = verify_onnx(tmp, model, inputs, name=path)

    atomic_write(path, write)
    result["verify_batch"] = verify_batch
    return result


def _with_metadata(data: bytes, metadata: Mapping[str, object]) -> bytes:
    """The serialised model ``data`` with ``metadata`` added as string metadata properties."""
    if not metadata:
        return data
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
    return proto.SerializeToString()


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode (the original is left on its device and mode)."""
    return copy.deepcopy(model).float().cpu().eval()
