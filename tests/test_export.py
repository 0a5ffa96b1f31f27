"""ONNX export: the Model Zoo interface, a dynamic batch, outputs equal to PyTorch's, loud failures."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ferplus.checkpoint import save_checkpoint
from ferplus.errors import FerplusError
from ferplus.labels import NUM_EMOTIONS
from ferplus.models import INPUT_SIZE, create_model
from ferplus.onnx_export import export_onnx
from ferplus.scorers import INPUT_NAME, OUTPUT_NAME, OnnxModel
from scripts import fill_disk_for, run_script

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_model(untrained_model) -> nn.Module:
    return untrained_model["model"]


@pytest.fixture(scope="module")
def exported(untrained_model) -> Path:
    return untrained_model["onnx"]


def test_interface_names_and_shapes(exported):
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME] == ["Input3"]
    assert [o.name for o in graph.output] == [OUTPUT_NAME] == ["Plus692_Output_0"]
    (model_input,) = graph.input
    (model_output,) = graph.output
    assert model_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = model_input.type.tensor_type.shape.dim
    out_dims = model_output.type.tensor_type.shape.dim
    # A symbolic first axis (dynamic N), fixed crop shape and eight scores.
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == [1, INPUT_SIZE, INPUT_SIZE]
    assert out_dims[0].dim_param and out_dims[1].dim_value == NUM_EMOTIONS


@pytest.mark.parametrize("batch", [1, 5])
def test_round_trip_matches_pytorch(tiny_model, exported, batch):
    inputs = torch.randn(batch, 1, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = tiny_model(inputs).numpy()
    got = OnnxModel(exported)(inputs).numpy()
    assert got.shape == (batch, NUM_EMOTIONS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    # Scores far above the tolerance, or the comparison above would prove little.
    assert np.abs(expected).max() > 100 * TOLERANCE


def test_metadata_round_trip(exported):
    assert OnnxModel(exported).metadata == {"model": "vgg13_tiny", "mode": "majority", "epoch": 0}


def test_export_leaves_training_model_untouched(tmp_path):
    model = create_model("vgg13_tiny").train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training


class RandomScores(nn.Module):
    """Adds fresh noise to its scores: onnxruntime draws other numbers than PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(INPUT_SIZE * INPUT_SIZE, NUM_EMOTIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + torch.rand(x.shape[0], NUM_EMOTIONS)


class BakedBatch(nn.Module):
    """Reshapes with a Python int: the trace freezes the batch size, so other batch sizes fail."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(INPUT_SIZE * INPUT_SIZE, NUM_EMOTIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(int(x.shape[0]), -1))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # BakedBatch's int() is the point
@pytest.mark.parametrize(
    "model, message",
    [
        (RandomScores(), "onnxruntime and PyTorch disagree"),
        (BakedBatch(), r"expected one input .* found .* outputs \[Plus692_Output_0 tensor\(float\) \[8, 8\]\]"),
    ],
)
def test_failed_verification_raises_and_writes_nothing(tmp_path, model, message):
    path = tmp_path / "bad.onnx"
    with pytest.raises(FerplusError, match=message) as info:
        export_onnx(model, path)
    assert str(path) in str(info.value)  # names the file asked for, not the temporary one
    assert list(tmp_path.iterdir()) == []


def test_export_script(tmp_path, tiny_model, capsys):
    checkpoint = tmp_path / "best.pt"
    state = {"model": "vgg13_tiny", "mode": "probability", "model_state": tiny_model.state_dict(), "epoch": 2}
    save_checkpoint(checkpoint, state)
    out = tmp_path / "out" / "model.onnx"
    assert run_script("export_onnx", checkpoint, out) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs difference to PyTorch" in printed
    assert OnnxModel(out).metadata == {"model": "vgg13_tiny", "mode": "probability", "epoch": 2}


def test_export_script_bad_verify_batch(tmp_path, tiny_model, capsys):
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, {"model": "vgg13_tiny", "mode": "majority", "model_state": tiny_model.state_dict()})
    assert run_script("export_onnx", checkpoint, tmp_path / "m.onnx", "--verify-batch", 0) == 2
    assert capsys.readouterr().err.strip() == "export_onnx.py: error: --verify-batch 0: compare between 1 and 1024 crops"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_export_script_full_disk_is_one_line_and_exit_1(untrained_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    fill_disk_for(monkeypatch, out.name)
    assert run_script("export_onnx", untrained_model["checkpoint"], out) == 1
    assert capsys.readouterr().err == f"export_onnx.py: error: {out}: {os.strerror(errno.ENOSPC)}\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name] and out.read_bytes() == b"an earlier export"


def test_export_script_missing_checkpoint(tmp_path, capsys):
    status = run_script("export_onnx", tmp_path / "nope.pt", tmp_path / "m.onnx")
    assert status == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class ThreeHeads(nn.Module):
    """Right names, but three outputs of three scores each."""

    def __init__(self, side: int = INPUT_SIZE, scores: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(side * side, scores)

    def forward(self, x: torch.Tensor):
        scores = self.linear(x.flatten(1))
        return scores, scores + 1, scores + 2


class OneHead(ThreeHeads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def export_raw(model: nn.Module, path: Path, side: int, outputs: list) -> Path:
    """Export without our checks, as another tool would."""
    torch.onnx.export(
        model, (torch.zeros(2, 1, side, side),), str(path), input_names=[INPUT_NAME], output_names=outputs,
        dynamic_axes={INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in outputs}}, opset_version=17, dynamo=False,
    )
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_model_files_of_another_interface_are_refused(tmp_path, capsys):
    cases = {
        "three_outputs.onnx": (ThreeHeads(), INPUT_SIZE, [OUTPUT_NAME, "b", "c"]),
        "three_scores.onnx": (OneHead(), INPUT_SIZE, [OUTPUT_NAME]),
        "small_input.onnx": (OneHead(48, NUM_EMOTIONS), 48, [OUTPUT_NAME]),
    }
    face = tmp_path / "face.png"
    face.write_bytes(b"")  # never read: the model is refused first
    for name, (model, side, outputs) in cases.items():
        path = export_raw(model, tmp_path / name, side, outputs)
        with pytest.raises(FerplusError) as error:
            OnnxModel(path)
        assert str(error.value).startswith(
            f"{path}: expected one input Input3 float [N, 1, {INPUT_SIZE}, {INPUT_SIZE}] and one output "
            f"Plus692_Output_0 float [N, {NUM_EMOTIONS}], found inputs [Input3 tensor(float) ['N', 1, {side}, {side}]]"
        )
        assert run_script("predict", "--model", path, face) == 2
        assert capsys.readouterr().err.splitlines() == [f"predict.py: error: {error.value}"]
