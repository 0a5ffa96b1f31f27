#!/usr/bin/env python3
"""Predict the emotions of faces in photos and videos: python predict.py --model RUN/best.pt photo.jpg clip.mp4

The same as ``ferplus-predict``; the command line lives in ``src/ferplus/cli/predict.py``.
"""

import sys

from ferplus.cli.predict import run

if __name__ == "__main__":
    sys.exit(run())
