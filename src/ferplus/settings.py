"""What a run can be asked for, without importing torch: the command lines' choices and defaults.

The command lines build their parsers from this module alone, so ``--help`` and flag errors
answer before torch loads. The registries these names come from (``labels.MODES``,
``models.MODELS``) check at import that they hold exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: The training modes, in the paper's order (``labels.MODES`` holds their rules).
MODE_NAMES = ("majority", "probability", "crossentropy", "multi_target")
#: The networks of the model registry (``models.MODELS`` builds them).
MODEL_NAMES = ("vgg13", "vgg13_bn", "vgg13_small", "vgg13_tiny")
DEFAULT_MODEL = "vgg13"
#: ``--step`` choices: ``auto`` is ``graph`` on CUDA and ``eager`` elsewhere and under torchrun;
#: ``compiled`` is ``graph`` with the network compiled by ``torch.compile`` inside the graph (its
#: dropout masks come from the compiler's own random-number code, so they differ from eager's).
STEP_KINDS = ("auto", "eager", "graph", "compiled")
DEVICES = ("auto", "cpu", "cuda")
#: Images per forward pass when scoring (no gradients, so far more than a training minibatch fit).
EVAL_BATCH_SIZE = 256
#: Crops compared between PyTorch and onnxruntime when an export is verified.
DEFAULT_VERIFY_BATCH = 8
#: Enough crops to catch any batch-dependent fault, at 16 MB of input: a larger batch would only
#: spend memory (10**8 crops need 1.6 TB).
MAX_VERIFY_BATCH = 1024


@dataclass
class TrainConfig:
    """Everything a run depends on; field names match ``train.py``'s flags.

    ``batch_size`` is per process: under ``torchrun`` with N processes an optimiser step
    sees N × ``batch_size`` images, and ``lr`` is used as given (scale it yourself).
    ``amp`` None means bf16 autocast where it pays (CUDA, CPUs with native bf16); ``step``
    is one of :data:`STEP_KINDS`. ``tensorboard`` writes TensorBoard event files into the run
    folder's ``tensorboard/`` (it needs the ``tensorboard`` package).
    """

    base_folder: str
    training_mode: str = "majority"
    max_epochs: int = 100
    batch_size: int = 32
    lr: float = 0.005
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    amp: Optional[bool] = None
    output: Optional[str] = None
    resume: bool = False
    model: str = DEFAULT_MODEL
    step: str = "auto"
    tensorboard: bool = False
    checkpoint_every: Optional[float] = None
