#!/usr/bin/env bash
# Every GPU check of issues #15, #17, #18 and #20, in two device calls on one warm machine:
#   bash benchmarks/gpu_check.sh tests   # gpu-marked tests, the whole suite on CUDA, a `fit` step
#   bash benchmarks/gpu_check.sh speed   # the GPU speed benchmark and the stage speeds
# Prepare first with `bash benchmarks/gpu_prep.sh` (undo: `bash benchmarks/gpu_prep.sh undo`), then
# call the device with carry [".gpu"] and timeout_s 450 for each part (expected: about 5 minutes
# each; the limits below are caps).
#
# Each step runs under its own time limit and logs to /tmp/gpu_check/<part>/<step>.log; a line per
# step (exit status, seconds) goes to stdout and summary.txt. After every step the part's folder is
# packed again into $OUT/gpu_check_<part>.tgz beside summary.txt (a call returns 8 files, and
# whatever is in $OUT when the device kills a call at its limit). The exit status is the number of
# failed steps.
# Installs go to /tmp/site (PYTHONPATH), the project editable with its folder map, so the
# image's own environment is never written to. The Fashion-MNIST train split is a stand-in:
# the test split tiled six times (the real one would not fit the carry limit), so numbers that
# depend on training data are not comparable with the README's.
#
# GPU_CHECK_SMOKE=1 (with PYTHON=..., GPU_CHECK_WORKERS=2, GPU_CHECK_LIMIT_SCALE=10) rehearses the same
# steps on a CPU at tiny sizes.
set -uo pipefail
PART=${1:-all}
case $PART in tests|speed|all) ;; *) echo "usage: gpu_check.sh [tests|speed|all]" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
OUT=${OUT:-out/gpu_check}
LOGS=/tmp/gpu_check/$PART
SITE=/tmp/site
FAILED=0
rm -rf "$LOGS"
mkdir -p "$OUT" "$LOGS"
: > "$LOGS/summary.txt"
pack() { cp "$LOGS/summary.txt" "$OUT/"; tar czf "$OUT/gpu_check_$PART.tgz" -C "$LOGS" .; }
trap pack EXIT
export PYTHONUNBUFFERED=1 MIGBENCH_CACHE=/tmp/migbench-cache MIGBENCH_DATA=/tmp/fmnist
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PATH=$SITE/bin:$PATH

# step NAME SECONDS COMMAND...: COMMAND under a time limit (times GPU_CHECK_LIMIT_SCALE), its
# output in $LOGS/NAME.log, whose last lines are echoed.
step() {
  local name=$1 limit=$(($2 * ${GPU_CHECK_LIMIT_SCALE:-1})) start=$SECONDS
  shift 2
  timeout -k 5 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local status=$?
  [ "$status" = 0 ] || FAILED=$((FAILED + 1))
  echo "$name: exit $status after $((SECONDS - start)) s (limit $limit)" | tee -a "$LOGS/summary.txt"
  tr '\r' '\n' < "$LOGS/$name.log" | tail -n 4 | cut -c1-240 | sed 's/^/    /' | tee -a "$LOGS/summary.txt"
  pack
}

# Setup (once per machine): the wheels and the project (editable, with its folder map) into $SITE;
# PYTHONPATH folders skip .pth files, so a sitecustomize there processes the editable install's
# (then runs any sitecustomize of the image's own); the data into $MIGBENCH_DATA.
[ -f "$SITE/.done" ] || (
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .gpu/whl/*.whl || exit 1
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" -e . || exit 1
  rm -rf "$SITE/tests"  # torch-fidelity's own tests package
  cat > "$SITE/sitecustomize.py" <<'EOF'
import importlib.machinery, importlib.util, os, site, sys
here = os.path.dirname(os.path.abspath(__file__))
site.addsitedir(here)
spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
if spec is not None:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
EOF
  mkdir -p /tmp/fmnist && cp .gpu/data/t10k-* /tmp/fmnist/ || exit 1
  "$PY" - <<'EOF' || exit 1
import gzip
for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
    raw = gzip.open(f".gpu/data/t10k-{kind}-ubyte.gz").read()
    head = bytearray(raw[:header])
    head[4:8] = (60000).to_bytes(4, "big")
    with open(f"/tmp/fmnist/train-{kind}-ubyte.gz", "wb") as f:
        f.write(gzip.compress(bytes(head) + raw[header:] * 6, 1))
EOF
  touch "$SITE/.done"
) > "$LOGS/setup.log" 2>&1 || { cat "$LOGS/setup.log"; exit 1; }
SMOKE=$SMOKE "$PY" -c 'import os, migbench.benchmarks.stage_speed, torch_fidelity, prdc, torch
print("setup: torch", torch.__version__, "CUDA", torch.cuda.is_available())
assert torch.cuda.is_available() or os.environ["SMOKE"] == "1", "no CUDA device: nothing to check"' \
  2>&1 | tee -a "$LOGS/summary.txt" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee -a "$LOGS/summary.txt"
if "$PY" -c 'import xdist' 2>/dev/null; then PARALLEL=(-n "${GPU_CHECK_WORKERS:-8}"); else PARALLEL=(); fi
if [ "$SMOKE" = 1 ]; then N=2; NSMALL=2; BATCH=2; else N=1000; NSMALL=500; BATCH=125; fi

if [ "$PART" != speed ]; then
  step gpu_tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
  # the whole suite, as `make test` runs it; results/ and reports/ did not travel, so the one test
  # of the committed rows is left out
  step make_test 200 env OMP_NUM_THREADS=2 "$PY" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" --durations=15 \
    --deselect tests/test_precision.py::test_committed_results_stay_current tests/
  step fit 60 "$PY" -m migbench.cli fit token_critic --set steps=2 --set name=gpu_check_critic \
    --run-dir /tmp/fit_critic
fi
if [ "$PART" != tests ]; then
  step gpu_speed 140 "$PY" -m pytest -q -p no:cacheprovider -m benchmark --benchmark-enable -s \
    tests/benchmarks/test_gpu_speed.py --benchmark-json "$LOGS/gpu_speed.json"
  # issue #17: the ImageNet path per stage at full size on random weights (valeoai's 256 px settings)
  step stage_valeoai 50 "$PY" -m migbench.benchmarks.stage_speed --n "$N" --batch-size "$BATCH" \
    --out "$LOGS/stage_speed_valeoai.json"
  # issue #18: AutoNAT-L at T = 8 without and with KA-MIG (random weights and parts)
  for methods in maskgit maskgit,ka_mig; do
    step "stage_autonat_${methods/,/_}" 70 "$PY" -m migbench.benchmarks.stage_speed --backbone autonat_l \
      --methods "$methods" --preset autonat_t8 --n "$N" --batch-size "$BATCH" \
      --out "$LOGS/stage_speed_autonat_${methods/,/_}.json"
  done
  # issue #20: TiTok B-64 and S-128 at their released settings (15 and 128 passes per image)
  step stage_titok_b64 30 "$PY" -m migbench.benchmarks.stage_speed --backbone titok_b64 --methods maskgit \
    --preset titok_b64 --n "$N" --batch-size "$BATCH" --out "$LOGS/stage_speed_titok_b64.json"
  step stage_titok_s128 50 "$PY" -m migbench.benchmarks.stage_speed --backbone titok_s128 --methods maskgit \
    --preset titok_s128 --n "$NSMALL" --batch-size "$BATCH" --out "$LOGS/stage_speed_titok_s128.json"
fi
exit "$FAILED"
