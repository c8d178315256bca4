#!/usr/bin/env bash
# Prepare one GPU-lease training run (this workplace's `device` tool: 15 minutes, nothing
# downloadable there, at most 64 MiB travels with the checkout).
#
#   scripts/gpu_lease/prepare.sh WORK_DIR
#
# WORK_DIR is a `train-demo-models` work folder whose nnU-Net data is already preprocessed
# (phantoms_*/phantoms.json, nnUNet_raw/*/dataset.json, nnUNet_preprocessed/*). Writes, in
# the repository root and ignored by git:
#   .whl/            cp312 wheels the GPU image lacks (nnU-Net and its helpers; no SimpleITK:
#                    its 53 MB wheel does not fit, see shim/)
#   .gpu/work.tar.xz the work folder's metadata and preprocessed `3d_demo` data, images stored
#                    float16 (nnU-Net's loader casts patches to float32), about 16 MB for 24
#                    small phantoms
# Then: run(command="bash scripts/gpu_lease/run.sh", carry=[".gpu", ".whl"], timeout_s=580).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(realpath "${1:?usage: prepare.sh WORK_DIR}")
for p in /.whl/ /.gpu/; do grep -qx "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
mkdir -p .whl .gpu
PLAT=""
for n in 28 27 24 17; do PLAT="$PLAT --platform manylinux_2_${n}_x86_64"; done
for pkg in nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 batchgenerators==0.25.5 \
           batchgeneratorsv2==0.3.6 blosc2==4.14.1 ndindex numexpr pydantic pydantic-core annotated-types \
           typing-inspection nibabel connected-components-3d graphviz yacs future; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLAT --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
python3 -m pip wheel -q --no-deps acvl_utils==0.2.6 -w .whl   # published as a source archive only
python3 - "$WORK" <<'PY'
import shutil, sys, tarfile
from pathlib import Path

import blosc2
import numpy as np

src = Path(sys.argv[1])
stage = Path(".gpu/stage/work")
shutil.rmtree(stage.parent, ignore_errors=True)
for f in list(src.glob("phantoms_*/phantoms.json")) + list(src.glob("nnUNet_raw/*/dataset.json")) + \
        [p for p in src.glob("nnUNet_preprocessed/*/*.json")]:
    (stage / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, stage / f.relative_to(src))
for f in src.glob("nnUNet_preprocessed/*/nnUNetPlans_3d_demo/*"):
    out = stage / f.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    if f.suffix == ".b2nd" and not f.name.endswith("_seg.b2nd"):
        a = blosc2.open(str(f), mode="r")
        blosc2.asarray(a[:].astype(np.float16), urlpath=str(out), mode="w", chunks=a.chunks, blocks=a.blocks,
                       cparams=blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=9, filters=[blosc2.Filter.SHUFFLE]))
    else:
        shutil.copy(f, out)
with tarfile.open(".gpu/work.tar.xz", "w:xz") as tar:
    tar.add(stage, arcname="work")
shutil.rmtree(stage.parent)
PY
du -sh .whl .gpu/work.tar.xz
