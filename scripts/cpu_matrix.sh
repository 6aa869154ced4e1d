#!/usr/bin/env bash
# The C++ ops on x86-64 CPUs without AVX-512 and without AVX, proved under emulation (issue 23).
# qemu-user (Debian 12's qemu-user 7.2, installed when missing) runs the venv's Python as
#   Haswell  AVX2 + FMA, no AVX-512: torch and pegasus._C must pick avx2
#   Nehalem  SSE4.2, no AVX (x86-64-v2, the floor: numpy 2.4's wheel dies with SIGILL on an older
#            CPU, an SSE4.1 pinsrq in a static initializer of _multiarray_umath, at import)
# and under each model runs, in order: a probe that prints the capability torch and pegasus._C
# pick (the wrong one fails: a model that had more would prove nothing), the op tests below, and
# `pegasus generate -n 16 --alpha 0.5 --seed 0`, whose PNG must equal the native one byte for byte.
# It does, with these margins: the portable build's logits differ from AVX2's and AVX-512's (which
# agree bit for bit) by up to 1.9e-5, 2.4e-5 once divided by the temperature 0.8, while the
# smallest gap between the best and second-best Gumbel score of the 1024 choices is 1.6e-3 (66x);
# oneDNN's AVX2 and SSE4.1 convolutions move the decoder's floats by up to 3.6e-7 (9e-5 of a pixel
# level), and the value nearest a rounding boundary is 1.9e-5 of a level from it (it moved 7.6e-6):
# other samples could differ by one level in a pixel.
# Any failure, SIGILL (exit 132) included, makes the script exit non-zero.
#
#   scripts/cpu_matrix.sh          VENV (default: .venv) is the virtualenv to run
#
# qemu's TCG runs this code ~20x slower than the CPU does (importing torch alone takes ~15 s), so
# the tests are the ones an instruction set can change (with generate, 2.3 minutes of CPU under
# Nehalem, 2.8 under Haswell, whose vector-build test starts two children):
#   tests/test_extension.py                      pegasus._C loads (PEGASUS_REQUIRE_EXT=1), backends
#   test_nearest_code.py, backend cpu            the model's vector build of its fused kernel
#                                                (nearest_rows) on every dtype, layout and odd
#                                                shape up to 1000 rows
#   test_sample_loop.py: every vector build      csrc/cpu/vec_kernels* against the reference loop, in
#     (its children run on the same model), the  children asking for each build the model has; the
#     step ops, and the cpu loop on the edge     step ops and sample_loop against the reference and
#     cases and the trained configuration        the naive sampler (top-k, one code, 512 codes)
# Left out: the pure-PyTorch reference and naive samplers' own tests and opcheck (no code of ours
# that depends on the ISA; opcheck alone takes 90 s under TCG), torch.compile (minutes), the 4099-
# row nearest_code shapes (10 s each; the 1000-row ones cross the same blocks) and Triton's
# interpreter (Python). sys.executable is a script that starts qemu again with the same model,
# because qemu-user runs a guest's exec natively: the tests' child Pythons would escape the model.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
MODELS=(
  # TCG cannot emulate these system features of Haswell and warns about each in every process.
  "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-rtm,-invpcid avx2"
  "Nehalem default"
)
TESTS=(tests/test_extension.py tests/test_nearest_code.py tests/test_sample_loop.py)
SELECT="test_extension.py or (test_nearest_code.py and cpu and not 4099) or steps_match_reference_ops or vector_build"
SELECT+=" or bit_for_bit or (cpu and (batch_one_one_code or default_prior_config or logits_and_grids and 5-4-False))"

if ! command -v qemu-x86_64 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "+ apt-get install -y qemu-user"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user >/dev/null
  else
    echo "qemu-x86_64 is missing and this is not root with apt-get: apt-get install -y qemu-user" >&2
    exit 1
  fi
fi
# qemu-user loads an ELF, not a script: the interpreter the venv's python links to.
python=$(readlink -f "$venv/bin/python")
[ "$(head -c 4 "$python" | tail -c 3)" = ELF ] || { echo "$venv/bin/python: $python is not an ELF binary" >&2; exit 1; }
echo "$(qemu-x86_64 --version | head -1); $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)')"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
export PEGASUS_REQUIRE_EXT=1 OMP_NUM_THREADS=2
unset TRITON_INTERPRET ATEN_CPU_CAPABILITY
generate=(-m pegasus generate -n 16 --alpha 0.5 --seed 0)
"$venv/bin/python" "${generate[@]}" --out "$tmp/native.png" >/dev/null

ticks=$(getconf CLK_TCK)
cpu_s() {  # CPU seconds of this script's finished children so far: qemu's, its guests' included
  local stat
  read -ra stat </proc/$$/stat
  echo $(( (stat[15] + stat[16]) / ticks ))
}

failed() {  # step log exit-status: says why, names SIGILL
  local how="exit status $3"
  if [ "$3" = 132 ] || grep -qE "uncaught target signal 4|SIGILL" "$2"; then how="SIGILL (illegal instruction), exit status $3"; fi
  tail -40 "$2" >&2
  echo "FAILED under -cpu $model: $1: $how (log above)" >&2
  exit 1
}

summary=()
for entry in "${MODELS[@]}"; do
  cpu=${entry% *} want=${entry##* } model=${cpu%%,*}
  start=$SECONDS cpu0=$(cpu_s)
  # A venv whose python is qemu-x86_64 -cpu $cpu running the real interpreter: the same site-packages,
  # found through pyvenv.cfg next to bin/ (qemu's -0 gives Python this path as argv[0]).
  fake=$tmp/$model
  mkdir -p "$fake/bin"
  cp "$venv/pyvenv.cfg" "$fake/"
  ln -s "$venv/lib" "$fake/lib"
  printf '#!/bin/sh\nexec qemu-x86_64 -cpu %s -0 "$0" %s "$@"\n' "$cpu" "$python" >"$fake/bin/python"
  chmod +x "$fake/bin/python"
  py=$fake/bin/python

  echo "== -cpu $cpu"
  rc=0
  picks=$("$py" -c 'import torch, pegasus; print(torch.backends.cpu.get_cpu_capability(), torch.ops.pegasus._cpu_capability())' \
    2>"$tmp/probe.log") || rc=$?
  [ $rc = 0 ] || failed "import torch, pegasus" "$tmp/probe.log" $rc
  read -r torch_cap ext_cap <<<"$picks"
  echo "capability: torch $torch_cap, pegasus._C $ext_cap"
  if [ "$ext_cap" != "$want" ] || [ "${torch_cap,,}" != "$want" ]; then
    echo "FAILED under -cpu $model: expected both to pick $want: the model does not have what it claims" >&2
    exit 1
  fi

  t0=$SECONDS
  "$py" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}" -k "$SELECT" >"$tmp/tests.log" 2>&1 || rc=$?
  [ $rc = 0 ] || failed "pytest" "$tmp/tests.log" $rc
  grep "^SKIPPED" "$tmp/tests.log" || true
  result=$(tail -1 "$tmp/tests.log" | sed -E 's/=//g; s/, [0-9]+ deselected//; s/ in .*//' | xargs)
  echo "tests: $result ($((SECONDS - t0)) s)"

  t0=$SECONDS
  "$py" "${generate[@]}" --out "$tmp/$model.png" >"$tmp/generate.log" 2>&1 || rc=$?
  [ $rc = 0 ] || failed "pegasus generate" "$tmp/generate.log" $rc
  if ! cmp -s "$tmp/native.png" "$tmp/$model.png"; then
    "$venv/bin/python" -c 'import sys, numpy as np; from PIL import Image
a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in sys.argv[1:])
d = np.abs(a - b); print(f"{(d.max(-1) > 0).sum()} of {d.shape[0] * d.shape[1]} pixels differ, by up to {d.max()}")' \
      "$tmp/native.png" "$tmp/$model.png" >>"$tmp/generate.log" 2>&1
    # A pixel off by one level is the decoder's floats rounding the other way; more is a sampled code.
    failed "pegasus generate: the image differs from the native one" "$tmp/generate.log" 1
  fi
  echo "generate: identical to the native image ($((SECONDS - t0)) s)"
  summary+=("$model: torch $torch_cap, pegasus._C $ext_cap; $result; generate identical; $((SECONDS - start)) s ($(($(cpu_s) - cpu0)) s CPU)")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
