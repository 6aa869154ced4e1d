#!/usr/bin/env bash
# The GPU checks of a lent CUDA machine, in one go (see docs/development.md): build the
# extension against the machine's torch, run tests/test_gpu.py (the Triton kernels against the
# references on CUDA), then the sampler and nearest-code benchmarks on CUDA. Results go to $OUT
# (default ./gpu-out). Each step has its own time limit so that a slow one leaves the others' output.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# Not installed there: `pip install -e .` maps pegasus.kernels to kernels/, a link does it here.
[ -e pegasus/kernels ] || ln -s ../kernels pegasus/kernels
py=${PYTHON:-python3}
{
  nvidia-smi -L
  $py -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/env.txt"
start=$(date +%s)
MAX_JOBS=16 timeout 240 $py setup.py -q build_ext --inplace >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
timeout ${TEST_LIMIT:-150} $py -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log" | tail -15
echo "tests done: $(( $(date +%s) - start )) s"
timeout ${BENCH_LIMIT:-200} $py -m pegasus bench sampler --device cuda --min-run-time ${MIN_RUN:-0.3} --json "$out/sampler_cuda.jsonl" 2>&1 | tee "$out/bench_sampler.txt"
echo "sampler bench done: $(( $(date +%s) - start )) s"
timeout ${NC_LIMIT:-90} $py -m pegasus bench nearest-code --device cuda --quick --json "$out/nearest_code_cuda.jsonl" 2>&1 | tee "$out/bench_nearest_code.txt"
echo "all done: $(( $(date +%s) - start )) s"
