#!/usr/bin/env bash
# Train the bundled demo models in one GPU run, measure them on held-out phantoms, and
# leave pengwin_demo/models/bundled/{anatomy,abbc} ready to commit (MODEL_CARD.md includes the numbers).
#
#   scripts/gpu_train.sh                 # GPU: full demo recipe, more epochs
#   DEVICE=cpu EPOCHS=1 CASES=2 EVAL_CASES=0 scripts/gpu_train.sh   # the CPU code path (smoke)
#
# Environment: DEVICE (auto|cuda|cpu, default auto), WORK (scratch, default
# /tmp/pengwin_gpu_training), OUT (default pengwin_demo/models/bundled), RECIPE (demo|bootstrap), EPOCHS
# (default 150 on a GPU, the recipe's on CPU), CASES (training phantoms, default 48 on a GPU),
# THREADS (torch threads per process), EVAL_CASES (held-out full-size phantoms, default 3),
# MAX_MINUTES (training time budget per model; the learning rate decays over it; EPOCHS then
# only caps the run), ITERS (iterations per epoch). A WORK folder that already holds the
# phantoms' nnU-Net datasets and preprocessed `3d_demo` data is reused as it is (prepare it on
# another machine and copy it in: the GPU machine then needs no phantom generation).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-auto}
WORK=${WORK:-/tmp/pengwin_gpu_training}
OUT=${OUT:-pengwin_demo/models/bundled}
RECIPE=${RECIPE:-demo}
EVAL_CASES=${EVAL_CASES:-3}

HAVE_CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$DEVICE" = "auto" ]; then
  if [ "$HAVE_CUDA" = "1" ]; then DEVICE=cuda; else DEVICE=cpu; fi
fi
if [ "$DEVICE" = "cuda" ]; then
  [ "$HAVE_CUDA" = "1" ] || { echo "error: DEVICE=cuda but PyTorch sees no GPU" >&2; exit 2; }
  python -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
  EPOCHS=${EPOCHS:-150}; CASES=${CASES:-48}; THREADS=${THREADS:-4}
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-6}
else
  EPOCHS=${EPOCHS:-}; CASES=${CASES:-24}; THREADS=${THREADS:-1}
  echo "no GPU: CPU code path (slow; set EPOCHS/CASES small for a smoke run)"
fi

ARGS=(--recipe "$RECIPE" --device "$DEVICE" --work-dir "$WORK" --out "$OUT"
      --cases "$CASES" --threads "$THREADS")
[ -n "${EPOCHS}" ] && ARGS+=(--epochs "$EPOCHS")
[ -n "${MAX_MINUTES:-}" ] && ARGS+=(--max-minutes "$MAX_MINUTES")
[ -n "${ITERS:-}" ] && ARGS+=(--iterations-per-epoch "$ITERS")

start=$(date +%s)
python -m pengwin_demo train-demo-models "${ARGS[@]}"
echo "training took $(( $(date +%s) - start )) s on $DEVICE"

if [ "$EVAL_CASES" -gt 0 ]; then
  python -m pengwin_demo.training.quality "$OUT/anatomy" "$OUT/abbc" "$EVAL_CASES" full "$WORK/quality.json"
  python - "$OUT" "$WORK/quality.json" <<'PY'
import json, sys
from pathlib import Path
from pengwin_demo.training import add_quality_to_cards
add_quality_to_cards(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
PY
fi
du -sh "$OUT/anatomy" "$OUT/abbc"
echo "done: models in $OUT (commit $OUT/anatomy $OUT/abbc)"
