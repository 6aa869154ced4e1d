#!/usr/bin/env bash
# The aarch64 check (issue 23): cross-compile pegasus._C with Debian's aarch64 g++ against torch's
# aarch64 wheel, then run the C++ op tests under qemu-aarch64 with Debian 12's arm64 Python 3.11.
# Nothing arm64 is installed on the host: the arm64 .debs are unpacked into a sysroot (a private apt
# configuration, so the host's dpkg never learns the architecture), the aarch64 wheels into a site
# dir. Only g++-aarch64-linux-gnu and qemu-user are installed for the host, when missing.
#
#   scripts/aarch64_check.sh [pytest args]    default: the op tests (TESTS below)
#
# Environment: AARCH64_DIR (work dir, default ~/.cache/pegasus-aarch64; downloads are cached in
# $AARCH64_DIR/cache), TORCH_VERSION (default 2.10.0, see below), JOBS (compile jobs, default
# nproc), GENERATE=1 (also `pegasus generate` under emulation, compared with the host's image when
# NATIVE_PYTHON runs pegasus), NATIVE_PYTHON (default .venv/bin/python).
#
# Why torch 2.10.0 by default and not the pinned 2.13.0: PyPI's aarch64 wheels of 2.11 and later
# are CUDA 13 builds. Their libtorch_cpu.so itself needs libcudart.so.13 and libcupti.so.13, and
# libtorch.so needs libtorch_cuda.so (cuBLAS, cuDNN, NCCL...): 2.6 GB of nvidia wheels (3.9 GB
# unpacked) just to import torch. 2.10.0 is the newest aarch64 wheel that is a CPU build (146 MB;
# its nvidia requirements are marked x86_64 only). TORCH_VERSION=2.13.0 fetches those nvidia wheels
# too (the case below the wheel list) and runs the same steps.
#
# qemu-user runs one process: a child that the tests start with sys.executable would be an aarch64
# ELF the host kernel cannot exec (no binfmt_misc here). So sys.executable is bin/python3.11, a host
# shell script that starts qemu again (qemu's -0 sets argv[0], PYTHONHOME keeps the stdlib found).
# torch.compile's C++ compiler (inductor reads CXX) is the cross g++ (bin/aarch64-g++), run natively.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${AARCH64_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pegasus-aarch64}
torch_version=${TORCH_VERSION:-2.10.0}
jobs=${JOBS:-$(nproc)}
cache=$dir/cache
sysroot=$dir/sysroot
site=$dir/site-$torch_version
tree=$dir/tree-$torch_version
# About 11-13 min under qemu on one busy core (761 tests, 41 skipped). Emulation is 20-100x slower
# than the host: test_ctrl_c_stops_the_loop_between_rows gives the interrupted child 60 s to finish
# its row; the whole test took 71-104 s here and timed out once, on a loaded host.
TESTS=(tests/test_extension.py tests/test_nearest_code.py tests/test_sample_loop.py tests/test_sample_step_triton.py)
mkdir -p "$cache"

t0=$SECONDS
step_start=$SECONDS
step() {  # step NAME: prints the previous step's time, then NAME
  echo "[aarch64] $(date +%T) $1 (previous step $((SECONDS - step_start)) s, total $((SECONDS - t0)) s)"
  step_start=$SECONDS
}

step "host tools: aarch64-linux-gnu-g++, qemu-aarch64"
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || {
    echo "need g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2
    exit 1
  }
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++-aarch64-linux-gnu qemu-user >/dev/null
fi
aarch64-linux-gnu-g++ --version | head -1
qemu-aarch64 --version | head -1

step "arm64 sysroot: Debian's python3.11 and libpython3.11-dev, unpacked"
debs=(python3.11 libpython3.11-dev libstdc++6 libgomp1)
if [ ! -e "$sysroot/.done" ]; then
  apt_dir=$cache/apt-arm64
  mkdir -p "$apt_dir/sources.list.d" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$cache/debs"
  # The host's Debian sources, read for arm64 into a private state: the host's dpkg is untouched.
  cp /etc/apt/sources.list.d/debian.sources "$apt_dir/sources.list.d/"
  : >"$apt_dir/status"
  cat >"$apt_dir/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir/cache";
Dir::Cache::archives "$cache/debs";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$apt_dir/sources.list.d";
EOF
  export APT_CONFIG=$apt_dir/apt.conf
  apt-get update -q >/dev/null
  apt-get install -y -q --download-only --no-install-recommends "${debs[@]}" >/dev/null
  unset APT_CONFIG
  rm -rf "$sysroot" && mkdir -p "$sysroot"
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
  touch "$sysroot/.done"
fi
# qemu-user 7.2 shows the guest the host's /proc/cpuinfo (x86), and -L redirects that path too:
# without an aarch64 one, importing torch 2.13.0 dies in a static initialiser (SIGSEGV at address
# 0, right after it reads /proc/cpuinfo and the cpu topology in /sys). A Neoverse N1's, two cores,
# and qemu emulates that CPU (-cpu neoverse-n1), not its default "max": with max, HWCAP says SVE
# while this file does not, and torch.compile builds SVE kernels with flags that disable SVE.
mkdir -p "$sysroot/proc"
for cpu in 0 1; do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done >"$sysroot/proc/cpuinfo"
# The guest's own interpreter, for the tests' subprocesses (see the top of this file).
mkdir -p "$dir/bin"
cat >"$dir/bin/python3.11" <<EOF
#!/bin/sh
PYTHONHOME=$sysroot/usr exec qemu-aarch64 -cpu neoverse-n1 -L $sysroot -0 "\$0" $sysroot/usr/bin/python3.11 "\$@"
EOF
# torch.compile's C++ compiler as the guest's own g++ would be: the arm64 headers of the sysroot
# (pyconfig.h) and -march=native meaning the emulated CPU, which a cross compiler cannot work out
# ("unknown value 'native' for '-march'").
cat >"$dir/bin/aarch64-g++" <<EOF
#!/bin/sh
for a; do shift; [ "\$a" = -march=native ] && a=-mcpu=neoverse-n1; set -- "\$@" "\$a"; done
exec aarch64-linux-gnu-g++ "\$@" -idirafter $sysroot/usr/include
EOF
chmod +x "$dir/bin/python3.11" "$dir/bin/aarch64-g++"
py=$dir/bin/python3.11
ls "$cache"/debs | grep -E '^(python3.11-minimal|libc6|libstdc\+\+6)_'

step "aarch64 wheels: torch $torch_version and what the tests import, unpacked into a site dir"
# Listed one by one with --no-deps: pip download evaluates a requirement's markers (platform_machine)
# on the host, so resolving torch's requirements would bring x86_64-only CUDA wheels and triton.
# Pinned to the versions of the x86 virtualenv this was checked beside (mpmath: sympy wants < 1.4).
wheels=(
  "torch==$torch_version" filelock==4.3.2 typing-extensions==4.16.0 sympy==1.14.0 mpmath==1.3.0
  networkx==3.6.1 jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0
  numpy==2.4.6 pillow==13.0.0 safetensors==0.8.0 tqdm==4.70.1
  pytest==9.2.0 iniconfig==2.3.1 packaging==26.4 pluggy==1.7.0 pygments==2.21.0 hypothesis==6.170.27
  sortedcontainers==2.4.0 setuptools==84.2.1  # setuptools: torch.utils.cpp_extension, which torch.compile imports
)
case $torch_version in
  2.13.0)
    # torch 2.13.0's requirements for Linux (cuda-toolkit 13.0.3's extras spelled out), aarch64
    # builds. Its pin nvidia-nccl-cu13==2.29.7 is not on PyPI (2.27.7, 2.32.3 and 2.32.6 are): any
    # libnccl.so.2 loads, and NCCL never runs on CPU tensors.
    wheels+=("nvidia-cublas==13.1.1.3" "nvidia-cuda-cupti==13.0.85" "nvidia-cuda-nvrtc==13.0.88"
      "nvidia-cuda-runtime==13.0.96" "nvidia-cufft==12.0.0.61" "nvidia-cufile==1.15.1.6" "nvidia-curand==10.4.0.35"
      "nvidia-cusolver==12.0.4.66" "nvidia-cusparse==12.6.3.3" "nvidia-nvjitlink==13.0.88" "nvidia-nvtx==13.0.85"
      "nvidia-cudnn-cu13==9.20.0.48" "nvidia-cusparselt-cu13==0.8.1" "nvidia-nccl-cu13==2.32.3"
      "nvidia-nvshmem-cu13==3.4.5") ;;
  2.1[1-9].*) echo "torch $torch_version for aarch64 is a CUDA build: list its nvidia wheels here, as for 2.13.0" >&2; exit 1 ;;
esac
if [ ! -e "$site/.done" ]; then
  mkdir -p "$cache/wheels"
  ${PIP:-python3 -m pip} download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_25_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 -d "$cache/wheels" "${wheels[@]}" 2>&1 | { grep -v "is ignored" || true; }
  rm -rf "$site" && mkdir -p "$site"
  for pin in "${wheels[@]}"; do
    name=${pin%%==*}
    whl=$(ls "$cache/wheels" | grep -i -E "^${name//-/_}-${pin##*==}-.*(aarch64|none-any)\.whl$" || true)
    [ -n "$whl" ] || { echo "no aarch64 or pure-Python wheel $pin in $cache/wheels" >&2; exit 1; }
    unzip -q -o "$cache/wheels/$whl" -d "$site"
  done
  touch "$site/.done"
fi
ls "$site" | grep -E '^(torch|numpy)-.*dist-info$'

step "cross build: pegasus._C for aarch64 (every csrc/**/*.cpp, as setup.py)"
# setup.py's flags (-O3 -fopenmp) plus those torch.utils.cpp_extension adds, and NDEBUG as Python's
# CFLAGS have it. No -march: the aarch64 baseline (armv8-a, NEON included).
rm -rf "$tree" && mkdir -p "$tree/build"
(cd "$root" && git ls-files pegasus kernels tests csrc pytest.ini | while read -r f; do [ -e "$f" ] && echo "$f"; done |
  xargs -d '\n' cp --parents -t "$tree")
ln -s ../kernels "$tree/pegasus/kernels"  # `pip install -e .` maps pegasus.kernels to kernels/
tinc=$site/torch/include
cxxflags=(-O3 -fopenmp -fPIC -DNDEBUG -std=c++20 -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C
  -I"$tinc" -I"$tinc/torch/csrc/api/include" -I"$sysroot/usr/include/python3.11" -idirafter "$sysroot/usr/include")
(cd "$tree" && find csrc -name '*.cpp' | sort) >"$tree/build/sources"
(cd "$tree" && xargs -P "$jobs" -I{} sh -c 'aarch64-linux-gnu-g++ "$@" -c {} -o build/$(echo {} | tr / _).o' _ \
  "${cxxflags[@]}" <build/sources)
so=$tree/pegasus/_C.cpython-311-aarch64-linux-gnu.so
aarch64-linux-gnu-g++ -shared -fopenmp -o "$so" "$tree"/build/*.o -L"$site/torch/lib" -lc10 -ltorch -ltorch_cpu -ltorch_python
file "$so" | cut -d: -f2
# The portable build's 16-byte vectors are NEON registers here, and GCC contracts a * b + c into
# fmla (-ffp-contract=fast, GNU C++'s default, and FMA is in the aarch64 baseline): unlike x86's
# portable build, this one fuses, as the AVX2 and AVX-512 builds do.
echo "fmla instructions: $(aarch64-linux-gnu-objdump -d "$so" | grep -c -w fmla)," \
  "AVX2/AVX-512 builds in it: $(aarch64-linux-gnu-nm -C "$so" | grep -c -E 'pegasus_vec_avx(2|512)::' || true)"

step "load: import torch and pegasus._C under qemu-aarch64"
export PYTHONPATH=$tree:$site PYTHONDONTWRITEBYTECODE=1 CXX=$dir/bin/aarch64-g++
export TORCHINDUCTOR_CACHE_DIR=$dir/inductor-$torch_version  # not the host's /tmp/torchinductor_$USER
cd "$tree"
"$py" -c "
import platform, sys, time
t = time.time()
import torch
print('python', sys.version.split()[0], platform.machine(), '| torch', torch.__version__, torch.backends.cpu.get_cpu_capability(),
      '| import torch %.1f s' % (time.time() - t))
from pegasus import _extension, ops
assert _extension.has_cpp_ops(), _extension.cpp_load_error()
x, codes = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
i, _ = ops.nearest_code(x, codes, backend='cpu')
assert i.tolist() == torch.cdist(x, codes).argmin(1).tolist()
print('pegasus._C loaded, vector build', torch.ops.pegasus._cpu_capability(), '| nearest_code on cpu:', i.tolist())
"

step "tests under qemu-aarch64 (PEGASUS_REQUIRE_EXT=1, no triton)"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=("${TESTS[@]}")
status=0
PEGASUS_REQUIRE_EXT=1 "$py" -m pytest -q -p no:cacheprovider -rfEs --durations=5 "${args[@]}" \
  >"$dir/pytest-$torch_version.log" 2>&1 || status=$?
# From the slowest tests on: the failures' one-line summaries, the skips and the counts.
awk '/slowest .*durations|short test summary info/ {f = 1} f' "$dir/pytest-$torch_version.log" | grep . ||
  tail -n 30 "$dir/pytest-$torch_version.log"
echo "(full log: $dir/pytest-$torch_version.log)"

if [ "${GENERATE:-0}" = 1 ]; then
  step "pegasus generate -n 16 --alpha 0.5 --seed 0 under qemu-aarch64"
  "$py" -m pegasus generate -n 16 --alpha 0.5 --seed 0 --out "$dir/generate-aarch64.png"
  # The host's pegasus, from the checkout, without the aarch64 PYTHONPATH.
  native=(env -u PYTHONPATH -u CXX "${NATIVE_PYTHON:-$root/.venv/bin/python}")
  if (cd "$root" && "${native[@]}" -c "import pegasus") 2>/dev/null; then
    (cd "$root" && "${native[@]}" -m pegasus generate -n 16 --alpha 0.5 --seed 0 --out "$dir/generate-native.png")
    "${native[@]}" - "$dir/generate-aarch64.png" "$dir/generate-native.png" <<'EOF'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in sys.argv[1:])
diff = np.abs(a - b)
print(f"aarch64 vs native: identical={np.array_equal(a, b)}, max |diff| {diff.max()}, pixels differing {(diff.max(-1) > 0).mean():.2%}")
EOF
  fi
fi
step "done"
exit "$status"
