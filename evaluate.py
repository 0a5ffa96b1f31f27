#!/usr/bin/env python3
"""Evaluate a model on a prepared split: python evaluate.py RUN/best.pt -d DATA

The same as ``ferplus-evaluate``; the command line lives in ``src/ferplus/cli/evaluate.py``.
"""

import sys

from ferplus.cli.evaluate import run

if __name__ == "__main__":
    sys.exit(run())
