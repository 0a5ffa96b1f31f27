"""Trained networks as scorers: a checkpoint (``.pt``) or an exported ``.onnx`` file, used alike.

A scorer maps preprocessed crops ``(N, 1, 64, 64)`` to raw scores ``(N, 8)`` (torch tensors),
so evaluation and prediction need not care which kind of file they were given. onnxruntime is
imported only when an ONNX file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import describe, load_model
from .errors import FerplusError
from .fer_format import CROP_SIZE, NUM_EMOTIONS
from .fileio import read_regular_file
from .runtime import EVAL_BATCH_SIZE, ScoreFn, predict_scores, resolve_device

PathLike = Union[str, os.PathLike]

ONNX_SUFFIX = ".onnx"
#: Tensor names of the ONNX Model Zoo's emotion-ferplus model, so an export drops into the same code.
INPUT_NAME = "Input3"
OUTPUT_NAME = "Plus692_Output_0"
BATCH_AXIS_NAME = "N"
#: The interface an ONNX file must have: one float input and one float output (None: any batch size).
INPUT_SHAPE = (None, 1, CROP_SIZE, CROP_SIZE)
OUTPUT_SHAPE = (None, NUM_EMOTIONS)
ONNX_FLOAT = "tensor(float)"
ORT_LOG_FATAL_ONLY = 4
#: Operators an export of this toolkit never holds: control flow, whose run time the graph alone
#: does not bound (a ``Loop`` of 2**40 iterations hangs the tool that scores with it).
CONTROL_FLOW_OPS = frozenset({"Loop", "If", "Scan", "SequenceMap"})


def check_finite(scores: torch.Tensor, name: PathLike) -> torch.Tensor:
    """``scores``, if every one is finite; else a :class:`FerplusError` naming the model file ``name``.

    A model with NaN or infinite scores has no prediction to give: its argmax is meaningless and
    its probabilities print as ``nan%``, so it is refused rather than reported.
    """
    if not bool(torch.isfinite(scores).all()):
        raise FerplusError(f"{name}: the model gives non-finite scores (NaN or infinity): it is broken, not used")
    return scores


class TorchScorer:
    """A PyTorch network as a scorer, batch by batch on its device."""

    def __init__(
        self, model: nn.Module, device: Union[str, torch.device], batch_size: int = EVAL_BATCH_SIZE,
        name: PathLike = "model",
    ) -> None:
        """Wrap ``model`` (already on ``device``); ``batch_size`` bounds memory on large inputs;
        ``name`` (its file) is what messages name."""
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = name

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw scores float32 ``(N, 8)`` on the scorer's device for preprocessed crops ``(N, 1, 64, 64)``;
        non-finite scores are a :class:`FerplusError`."""
        return check_finite(predict_scores(self.model, inputs.to(self.device), self.batch_size), self.name)


class OnnxModel:
    """An exported model run by onnxruntime on the CPU, as a scorer."""

    def __init__(self, path: PathLike, name: Optional[PathLike] = None) -> None:
        """Open ``path`` in an onnxruntime session; an unreadable or foreign file is a :class:`FerplusError`
        naming ``name`` (default ``path``: the file the user gave, when ``path`` is a temporary copy).

        Only this toolkit's interface is accepted: one float input ``(N, 1, 64, 64)`` and one float
        output ``(N, 8)`` with a dynamic batch size N, and a graph without control flow.
        """
        import onnxruntime  # only ONNX users pay for importing it

        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        if not self.path.is_file():
            raise FerplusError(f"{self.name}: no such ONNX file")
        # Read here and passed as bytes: onnxruntime's own file opening fails on a path that is
        # not valid text (a byte like 0xff in a folder's name).
        try:
            data = read_regular_file(self.path)
        except OSError as e:
            raise FerplusError(f"{self.name}: cannot be read ({e.strerror or e})") from None
        _refuse_control_flow(data, self.name)
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = ORT_LOG_FATAL_ONLY  # failures surface as exceptions, not log lines
            self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise FerplusError(f"{self.name}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if not (_is_tensor(inputs, INPUT_NAME, INPUT_SHAPE) and _is_tensor(outputs, OUTPUT_NAME, OUTPUT_SHAPE)):
            raise FerplusError(
                f"{self.name}: expected one input {INPUT_NAME} float {_shape_text(INPUT_SHAPE)} and one output "
                f"{OUTPUT_NAME} float {_shape_text(OUTPUT_SHAPE)}, found inputs {_describe(inputs)} "
                f"and outputs {_describe(outputs)}"
            )
        #: What the exporter recorded about the network (``model``, ``mode``, ``epoch``), if anything;
        #: ONNX stores strings, so whole numbers (ASCII digits only: ``int("²")`` fails) are turned
        #: back into ints.
        self.metadata: Dict[str, Union[str, int]] = {
            key: int(value) if value.isascii() and value.isdigit() else value
            for key, value in self.session.get_modelmeta().custom_metadata_map.items()
        }

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Raw scores float32 ``(N, 8)`` on the CPU for preprocessed crops ``(N, 1, 64, 64)``;
        a failed run or non-finite scores are a :class:`FerplusError`."""
        batch = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        try:
            (scores,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        except Exception as e:  # onnxruntime's runtime errors have no public base class
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FerplusError(f"{self.name}: onnxruntime cannot run the model on a batch of {len(batch)}: {detail}") \
                from None
        if scores.shape != (len(batch), NUM_EMOTIONS):
            raise FerplusError(f"{self.name}: output of shape {scores.shape}, expected ({len(batch)}, {NUM_EMOTIONS})")
        return check_finite(torch.from_numpy(scores), self.name)


def _refuse_control_flow(data: bytes, name: Path) -> None:
    """A :class:`FerplusError` naming ``name`` when the ONNX graph ``data`` (its subgraphs and
    functions included) holds a control-flow operator; an unparsable file is left to onnxruntime."""
    import onnx  # only ONNX users pay for importing it

    try:
        proto = onnx.load_from_string(data)
    except Exception:  # not a model protobuf: the session's own error is more telling
        return
    graphs = [proto.graph]
    nodes = [node for function in proto.functions for node in function.node]
    while graphs:
        graph = graphs.pop()
        nodes.extend(graph.node)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    found = sorted({node.op_type for node in nodes} & CONTROL_FLOW_OPS)
    if found:
        raise FerplusError(
            f"{name}: holds control flow ({', '.join(found)}), which no export of this toolkit has: refused"
        )


def _is_tensor(args: Sequence, name: str, shape: Tuple[Optional[int], ...]) -> bool:
    """Whether ``args`` (a session's inputs or outputs) is exactly one float tensor ``name`` of
    ``shape`` (None: a dynamic size, named or not, never a fixed one)."""
    if len(args) != 1 or args[0].name != name or args[0].type != ONNX_FLOAT:
        return False
    dims = args[0].shape
    return len(dims) == len(shape) and all(
        not isinstance(dim, int) if want is None else dim == want for dim, want in zip(dims, shape)
    )


def _shape_text(shape: Tuple[Optional[int], ...]) -> str:
    return "[" + ", ".join(BATCH_AXIS_NAME if dim is None else str(dim) for dim in shape) + "]"


def _describe(args: Sequence) -> str:
    return "[" + ", ".join(f"{arg.name} {arg.type} {arg.shape}" for arg in args) + "]"


def is_onnx(path: PathLike) -> bool:
    """Whether ``path`` names an exported ONNX model (by its suffix) rather than a checkpoint."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def load_scorer(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[ScoreFn, Dict[str, Any]]:
    """Open a checkpoint or an ``.onnx`` file as a scorer.

    Returns ``(scorer, info)``: ``info`` holds ``model_file``, ``format`` (``checkpoint`` or
    ``onnx``), ``device`` (where the scorer runs) and, where recorded, ``model``, ``mode`` and
    ``epoch``. ``device`` may be ``auto``/``cpu``/``cuda``; it is resolved for checkpoints only,
    since ONNX files always run on the CPU with onnxruntime.
    """
    info: Dict[str, Any] = {"model_file": str(path)}
    if is_onnx(path):
        scorer: ScoreFn = OnnxModel(path)
        recorded = scorer.metadata
        info.update(format="onnx", device="cpu")
    else:
        device = resolve_device(device) if isinstance(device, str) else device
        model, recorded = load_model(path, device)
        scorer = TorchScorer(model, device, name=path)
        info.update(format="checkpoint", device=str(device))
    info.update(describe(recorded))
    return scorer, info
