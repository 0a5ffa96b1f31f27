"""FER+ training toolkit: facial-expression networks trained on crowd-sourced label distributions."""

from .fer_format import EMOTIONS, VOTE_CATEGORIES
from .labels import MODES

__version__ = "0.1.0"
__all__ = ["EMOTIONS", "MODES", "VOTE_CATEGORIES", "__version__"]
