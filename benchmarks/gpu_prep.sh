#!/usr/bin/env bash
# Prepare this checkout for the device calls of benchmarks/gpu_check.sh (`bash benchmarks/gpu_prep.sh`),
# and put it back afterwards (`bash benchmarks/gpu_prep.sh undo`).
#
# A device call carries the working tree and its carried folders, 64 MiB in all; the tracked tree
# is larger. So this leaves out, by sparse checkout, what no test or device step reads: reports/,
# results/ (the one test that reads them is deselected there) and the KA-MIG ablation's and
# self-guidance's upstream-substitution weights (read only by suites and by CPU-recorded tests
# that skip on CUDA). Into .gpu/ (ignored, carried) it puts the Fashion-MNIST test split (the
# device builds a stand-in train split from it) and the two wheels the device image lacks.
# It ends by printing what would travel, and fails above 60 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
if [ "${1:-}" = undo ]; then
  git sparse-checkout disable
  exit 0
fi
DATA=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" .gpu/data .gpu/whl
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
cp "$DATA"/t10k-images-idx3-ubyte.gz "$DATA"/t10k-labels-idx1-ubyte.gz .gpu/data/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl torch-fidelity==0.4.0 prdc==0.2
weights=migbench/weights
git sparse-checkout set --no-cone '/*' '!/reports/' '!/results/' \
  "!/$weights/fmnist_ka_mig_cooccurrence.safetensors" "!/$weights/fmnist_ka_mig_semantic.safetensors" \
  "!/$weights/fmnist_ka_mig_head.safetensors" "!/$weights/fmnist_ka_mig_incompatibility*.safetensors" \
  "!/$weights/fmnist_self_guidance_upstream.safetensors"
bytes=$(python3 -c 'import os, subprocess
names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.decode().split("\0")
names += [os.path.join(d, f) for d, _, fs in os.walk(".gpu") for f in fs]
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))')
echo "travels: $((bytes / 1048576)) MiB of 64 (carry [\".gpu\"]; undo with: bash benchmarks/gpu_prep.sh undo)"
[ "$bytes" -le $((60 * 1048576)) ] || { echo "too large for a device call" >&2; exit 1; }
