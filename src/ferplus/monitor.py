"""TensorBoard logging of a run (``train.py --tensorboard``): curves, the result, the settings.

Event files go to ``RUN/tensorboard/``; open them with ``tensorboard --logdir RUN`` (or the
parent of several run folders). Per epoch (the step axis is the epoch number) it writes
``loss/train``, ``accuracy/train``, ``accuracy/val``, ``accuracy/test`` (at new best validation
epochs, the only ones tested), ``lr`` and ``speed/train_images_per_second``; at the end
``result/test_accuracy_at_best_epoch`` (at the best epoch), the test confusion matrix at the
best epoch as an image (``confusion/test``) and the run's resolved settings as hparams with that
result as their metric. The ``tensorboard`` package is an optional extra
(``pip install -e .[tensorboard]``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
from PIL import Image

from .errors import FerplusError

FOLDER = "tensorboard"
RESULT_TAG = "result/test_accuracy_at_best_epoch"


def require_tensorboard() -> None:
    """A :class:`FerplusError` if the ``tensorboard`` package is missing (checked before a run writes anything)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise FerplusError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or pip install -e .[tensorboard])"
        )


def _hparam(value: Any) -> Any:
    # TensorBoard's hparams take numbers, strings and booleans only.
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardLog:
    """The TensorBoard event file of one run, in ``run_folder/tensorboard/``.

    A resumed run passes its first epoch as ``start_epoch``: TensorBoard then drops what an
    interrupted session logged from that epoch on, so the curves read as one run's.
    """

    def __init__(self, run_folder: Path, start_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # loads tensorboard, so only when asked for

        self.writer = SummaryWriter(log_dir=str(Path(run_folder) / FOLDER), purge_step=start_epoch or None)

    def epoch(self, record: Mapping[str, Any]) -> None:
        """Log one epoch's ``train.log`` record, and flush: a killed run keeps every logged epoch."""
        step = record["epoch"]
        self.writer.add_scalar("loss/train", record["train_loss"], step)
        self.writer.add_scalar("accuracy/train", record["train_accuracy"], step)
        self.writer.add_scalar("accuracy/val", record["val_accuracy"], step)
        if record["test_accuracy"] is not None:
            self.writer.add_scalar("accuracy/test", record["test_accuracy"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("speed/train_images_per_second", record["train_images"] / record["train_seconds"], step)
        self.writer.flush()

    def finish(self, results: Mapping[str, Any], confusion_png: Optional[Path], settings: Dict[str, Any]) -> None:
        """Log the result at the best epoch, the confusion picture and the settings as hparams; close the file."""
        from torch.utils.tensorboard.summary import hparams

        best_epoch, accuracy = results["best_epoch"], results["test_accuracy"]
        self.writer.add_scalar(RESULT_TAG, accuracy, best_epoch)
        if confusion_png is not None:
            with Image.open(confusion_png) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            self.writer.add_image("confusion/test", pixels, best_epoch, dataformats="HWC")
        # Written into this run's own event file (add_hparams would open a new folder per call).
        hparam_dict = {key: _hparam(value) for key, value in settings.items()}
        for summary in hparams(hparam_dict, {RESULT_TAG: accuracy}):
            self.writer.file_writer.add_summary(summary)
        self.close()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
