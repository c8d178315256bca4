#!/usr/bin/env bash
# GPU lease: train both demo models from the data carried by prepare.sh, leave them in $OUT.
# Every setup step has its own timeout and a Python stack dump on a hang, so that a stuck
# step costs one minute, not the lease (26 Nov 2026: an untimed import check hung for the
# whole 10-minute call, cause unknown, and the session's device time was spent).
set -o pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s)
MIN=${MIN:-7}
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
HERE=$(cd "$(dirname "$0")" && pwd)
step "installing wheels"
timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$HERE/shim
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python \
  && chmod +x /tmp/bin/python && export PATH=/tmp/bin:$PATH
step "unpacking data"
mkdir -p /tmp/w && timeout 60 tar -xJf .gpu/work.tar.xz -C /tmp/w || exit 4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
for check in "import numpy, torch; print('torch', torch.__version__, 'numpy', numpy.__version__)" \
             "import torch; print('cuda', torch.cuda.is_available())" \
             "import blosc2, cc3d, nibabel; print('blosc2', blosc2.__version__)" \
             "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer; print('nnunetv2 ok')" \
             "import pengwin_demo.training as t; t._demo_trainer_class(); print('pengwin_demo ok')"; do
  step "check: $check"
  timeout 90 python -c "import faulthandler; faulthandler.dump_traceback_later(60, exit=True)
$check" || exit 5
done
step "training, $MIN min per model"
DEVICE=cuda WORK=/tmp/w/work OUT=/tmp/models EVAL_CASES=0 CASES=${CASES:-24} EPOCHS=100000 ITERS=100 \
  MAX_MINUTES=$MIN THREADS=2 nnUNet_n_proc_DA=6 timeout $(( MIN * 60 + 150 )) bash scripts/gpu_train.sh 2>&1 \
  | tee "$OUT/run.log"
rc=$?
if [ ! -f /tmp/models/abbc/fold_all/checkpoint_final.pth ] || [ ! -f /tmp/models/anatomy/fold_all/checkpoint_final.pth ]; then
  step "training did not finish (rc $rc): exporting the latest checkpoints"
  timeout 60 python -c "
from pathlib import Path
from pengwin_demo.training import strip_model
for d in Path('/tmp/w/work/nnUNet_results').glob('Dataset*/nnUNetTrainerDemo__*'):
    strip_model(d, Path('/tmp/models_partial') / d.parent.name)"
  tar -cf "$OUT/models_partial.tar" -C /tmp models_partial
fi
[ -d /tmp/models ] && tar -cf "$OUT/models.tar" -C /tmp models
tar -czf "$OUT/logs.tgz" -C /tmp/w/work logs
grep -ah "Epoch time\|Pseudo dice\|budget" /tmp/w/work/logs/train_*.log | tail -16
step "done, rc $rc"
