#!/usr/bin/env bash
# Every GPU check of issues #15 and #17 in one run, for a session that is lent a CUDA machine.
#
# Prepare on the CPU machine, in the repo root. The tracked tree is about 65 MB of the 64 MiB a
# device call may carry, so leave reports/ and results/ behind and carry only the test split:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/data .gpu/whl
#   cp /usr/share/datasets/fashion-mnist/t10k-* .gpu/data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl torch-fidelity==0.4.0 prdc==0.2
#   git sparse-checkout set --no-cone '/*' '!/reports/' '!/results/'
# then call the device with carry [".gpu"], timeout_s 540 and the command
#   bash benchmarks/gpu_check.sh
# and `git sparse-checkout disable` afterwards. Logs and the benchmark's JSON land in $OUT.
# The test split doubles as the train split there (the real one does not fit the carry limit):
# tests that count 60,000 training images fail for that reason alone.
set -uo pipefail
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT" /tmp/fmnist
export PYTHONUNBUFFERED=1 MIGBENCH_CACHE=/tmp/migbench-cache MIGBENCH_DATA=/tmp/fmnist
python3 -m pip install -q --no-index --no-deps .gpu/whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
for kind in images-idx3 labels-idx1; do
  cp ".gpu/data/t10k-$kind-ubyte.gz" "/tmp/fmnist/t10k-$kind-ubyte.gz"
  cp ".gpu/data/t10k-$kind-ubyte.gz" "/tmp/fmnist/train-$kind-ubyte.gz"
done
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu tests/ 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest -q tests/ 2>&1 | tee "$OUT/make_test.log"
python3 -m migbench.cli fit token_critic --set steps=2 --run-dir /tmp/fit_critic 2>&1 | tail -3 | tee "$OUT/fit.log"
python3 -m pytest -q -m benchmark --benchmark-enable -s -p no:randomly tests/benchmarks/test_gpu_speed.py \
  --benchmark-json "$OUT/gpu_speed.json" 2>&1 | tee "$OUT/gpu_speed.log"
# issue #17: the ImageNet path's speed per stage at full size on random weights (2,000 images)
python3 -m migbench.benchmarks.stage_speed --n 2000 --batch-size 250 --out "$OUT/stage_speed.json" 2>&1 \
  | tee "$OUT/stage_speed.log"
# issue #18: AutoNAT-L at T = 8 without and with KA-MIG (random weights and parts): images/s, overhead, memory
for methods in maskgit maskgit,ka_mig; do
  python3 -m migbench.benchmarks.stage_speed --backbone autonat_l --methods $methods --preset autonat_t8 --n 2000 \
    --batch-size 125 --out "$OUT/stage_speed_autonat_${methods/,/_}.json" 2>&1 | tee -a "$OUT/stage_speed_autonat.log"
done
# issue #20: TiTok B-64 and S-128 at their released settings (random weights): 15 and 128 passes per image
for variant in b64 s128; do
  python3 -m migbench.benchmarks.stage_speed --backbone titok_$variant --methods maskgit --preset titok_$variant \
    --n 1000 --batch-size 125 --out "$OUT/stage_speed_titok_$variant.json" 2>&1 | tee -a "$OUT/stage_speed_titok.log"
done
