#!/usr/bin/env python3
"""Reproduce the paper's table: python reproduce.py -d DATA --seeds 5

The same as ``ferplus-reproduce``; the command line lives in ``src/ferplus/cli/reproduce.py``.
"""

import sys

from ferplus.cli.reproduce import run

if __name__ == "__main__":
    sys.exit(run())
