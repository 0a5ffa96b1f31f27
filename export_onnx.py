#!/usr/bin/env python3
"""Export a checkpoint to ONNX: python export_onnx.py RUN/best.pt model.onnx

The same as ``ferplus-export``; the command line lives in ``src/ferplus/cli/export.py``.
"""

import sys

from ferplus.cli.export import run

if __name__ == "__main__":
    sys.exit(run())
