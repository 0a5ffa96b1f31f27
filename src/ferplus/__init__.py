"""FER+ training toolkit: facial-expression networks trained on crowd-sourced label distributions."""

from typing import Any

from .fer_format import EMOTIONS, VOTE_CATEGORIES

__version__ = "0.1.0"
__all__ = ["EMOTIONS", "MODES", "VOTE_CATEGORIES", "__version__"]


def __getattr__(name: str) -> Any:
    # MODES holds the modes' loss functions and so needs torch: it loads on first use, which keeps
    # `import ferplus.cli…` (and every tool's --help) free of torch.
    if name == "MODES":
        from .labels import MODES

        return MODES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
