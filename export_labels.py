#!/usr/bin/env python3
"""Export the FER+ labels for other tools: python export_labels.py -d data --csv labels

The same as ``ferplus-labels``; the command line lives in ``src/ferplus/cli/export_labels.py``.
"""

import sys

from ferplus.cli.export_labels import run

if __name__ == "__main__":
    sys.exit(run())
