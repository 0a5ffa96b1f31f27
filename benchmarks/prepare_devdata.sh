#!/usr/bin/env bash
# Fill the git-ignored .devdata/ with what benchmarks/gpu_check.sh needs on a machine without
# network: the packed FER2013 pixels and their CSV rebuilder from ../shared/ferplus, and pytest's
# wheels (pure Python).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${FERPLUS_SHARED:-../shared/ferplus}
mkdir -p .devdata/wheels
cp "$SHARED/fer2013_pixels.npy.xz" "$SHARED/make_fer2013_csv.py" .devdata/
python -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
  -d .devdata/wheels pytest
du -sh .devdata
