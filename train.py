#!/usr/bin/env python3
"""Train a FER+ network: python train.py -d DATA -m probability

The same as ``ferplus-train``; the command line lives in ``src/ferplus/cli/train.py``.
"""

import sys

from ferplus.cli.train import run

if __name__ == "__main__":
    sys.exit(run())
