#!/usr/bin/env bash
# Build a copy of the C++ extension pegasus._C with AddressSanitizer and UndefinedBehaviorSanitizer,
# and run the op tests against it (not part of every CI run: the build and tests take a few minutes).
#
#   scripts/sanitize.sh [pytest args...]      # default: the op, sampler and extension tests
#
# The copy is built in a temporary directory from the working tree's tracked files, so the
# developer's own build is left alone; PYTHON picks the interpreter (default .venv/bin/python).
# The sanitizer runtimes are preloaded into Python (which was not built with them);
# detect_leaks=0 because CPython and torch keep allocations alive until exit on purpose.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d /tmp/pegasus-sanitize.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$work")
cd "$work"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
echo "building pegasus._C with $flags in $work" >&2
CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" "$py" setup.py -q build_ext --inplace >/dev/null
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$work"
"$py" -c "import pegasus._C, sys; f = pegasus._C.__file__; print('extension under test:', f); sys.exit(0 if f.startswith('$work') else 1)"
if [ $# -eq 0 ]; then
  set -- tests/test_sample_loop.py tests/test_nearest_code.py tests/test_extension.py
fi
"$py" -m pytest -q -p no:cacheprovider "$@"
