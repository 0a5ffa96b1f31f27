#!/usr/bin/env python3
"""Prepare the training folders: python generate_training_data.py -d data -fer fer2013.csv

The same as ``ferplus-generate``; the command line lives in ``src/ferplus/cli/generate.py``.
"""

import sys

from ferplus.cli.generate import run

if __name__ == "__main__":
    sys.exit(run())
