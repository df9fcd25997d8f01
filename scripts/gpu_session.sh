#!/usr/bin/env bash
# The checks a session runs when it is lent a GPU machine (see README "Benchmarks"): the test suite, the
# benchmark, and the Performance issue's measurement scripts, each under its own time limit, logs in $OUT.
#
#   bash scripts/gpu_session.sh [tests] [bench] [compile] [extras]     (default: all four)
#
# The lent machines have torch, timm, lightning and torchmetrics but not albumentations, jsonargparse, wandb or
# smp: carry them as cp312 wheels in .whl/ (git-ignored; see the device tool's README for `pip download`): the
# versions of constraints.txt of albumentations albucore stringzilla simsimd pydantic pydantic-core annotated-types
# typing-inspection jsonargparse docstring-parser typeshed-client wandb cwevals platformdirs opentelemetry-*
# xxhash segmentation-models-pytorch distro sniffio typing-extensions.
set -uo pipefail
OUT=${OUT:-/tmp/seg-gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_DIR=/tmp/wandb \
    WANDB_CACHE_DIR=/tmp/wandb/cache WANDB_CONFIG_DIR=/tmp/wandb/config WANDB_DATA_DIR=/tmp/wandb/data
mkdir -p /tmp/wandb
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests bench compile extras)
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for step in "${steps[@]}"; do
    echo "== $step $(date +%T)"
    case $step in
        tests) # CUDA tests first (about 45 s on an H100): the CPU-side CLI tests are slow there and may not finish.
               { timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu tests
                 timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider -m "not gpu" tests; } 2>&1 \
                   | grep -v Warning | tail -n 60 | tee "$OUT/tests.log" ;;
        bench) timeout "${BENCH_S:-300}" python3 -m seg.bench --device cuda --out "$OUT/bench" 2>&1 | tail -n 5
               cp "$OUT"/bench/*.md "$OUT"/bench/*.json "$OUT"/ 2>/dev/null; rm -rf "$OUT/bench" ;;
        compile) timeout "${COMPILE_S:-240}" python3 -m seg.bench --device cuda --parts models --heads fcn danet nonlocal \
                     --compile --out "$OUT/compile" 2>&1 | tail -n 5
               for f in "$OUT"/compile/*; do cp "$f" "$OUT/compile_$(basename "$f")"; done; rm -rf "$OUT/compile" ;;
        extras) { timeout 90 python3 scripts/pam_sdpa_variants.py; timeout 90 python3 scripts/loss_memory_ab.py --device cuda; } \
                    2>&1 | tail -n 60 | tee "$OUT/extras.log" ;;
    esac
done
echo "== done $(date +%T)"
