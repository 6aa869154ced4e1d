"""Sweep of the Triton nearest_code kernel on CUDA: tiles, warps, stages, dot precision, and the
argmin's shape (a running BLOCK_N x BLOCK_K minimum reduced once, or a reduction per code tile),
against the reference, at K=512, D=64, float32, N=4096 and 36864 (the bench's quick shapes).

For every variant: its indices against the reference's (rows that differ, and of those the ones that
are not near-ties by tests/test_nearest_code.py's rule, rtol 1e-5 of the cancelled scale), its
worst distance error over that scale (the reference's own is printed beside it), the GPU time of the
launch alone (CUDA graph replay) and, for the best, the time of the whole op as `pegasus bench`
times it (dispatcher, launcher, `settle_overflow_rows`; do_bench). Run on the GPU machine with
PYTHONPATH at the checkout and pegasus/kernels linked to kernels/ (scripts/gpu_check.sh does both);
the extension is not needed. Writes sweep.md and sweep.json under --out. The baseline, --old, is
the launcher this sweep replaced: `git show ddf427a:kernels/nearest_code.py > old_nearest_code.py`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench, do_bench_cudagraph

from pegasus import reference
from pegasus.kernels import nearest_code as module

SHAPES = [(4096, 512, 64), (36864, 512, 64)]
TEST_SHAPES = [(1, 1, 1), (7, 3, 65), (4099, 513, 64), (36864, 512, 64), (1000, 1024, 256)]  # tests/test_gpu.py


@triton.jit
def _codebook_mean(codes_ptr, stride_ck, stride_cd, K, D, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """The codebook's mean over its K codes, as the module's kernel takes it in its first loop."""
    dims = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_D], ACC)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        e = tl.load(codes_ptr + codes[:, None] * stride_ck + dims[None, :] * stride_cd,
                    mask=(codes < K)[:, None] & (dims < D)[None, :], other=0.0)
        total += tl.sum(e.to(ACC), axis=0)
    return total / K


@triton.jit
def _per_tile_kernel(
    z_ptr, stride_zn, stride_zd, codes_ptr, stride_ck, stride_cd, indices_ptr, dist_ptr, N, K, D,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The module's kernel with the argmin of the old one: (min, argmin) of every code tile."""
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < D
    mean = _codebook_mean(codes_ptr, stride_ck, stride_cd, K, D, ACC, BLOCK_K, BLOCK_D)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    z = tl.load(z_ptr + rows[:, None] * stride_zn + dims[None, :] * stride_zd,
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    z = z.to(ACC) - mean[None, :]
    sq = tl.sum(z * z, axis=1)
    z = z * -2.0
    best = tl.full([BLOCK_N], float("inf"), ACC)
    best_code = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        e = tl.load(codes_ptr + codes[:, None] * stride_ck + dims[None, :] * stride_cd,
                    mask=code_mask[:, None] & dim_mask[None, :], other=0.0)
        e = e.to(ACC) - mean[None, :]
        norms = tl.where(code_mask, tl.sum(e * e, axis=1), float("inf"))
        dist = norms[None, :] + tl.dot(z, tl.trans(e), input_precision=PRECISION)
        dist = tl.where(dist != dist, float("inf"), dist)
        tile_best, tile_code = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_code = tl.where(better, k0 + tile_code, best_code)
    nan_row = sq != sq
    best_code = tl.where(nan_row, 0, best_code)
    out = tl.where(nan_row, float("nan"), tl.maximum(sq + best, 0.0))
    tl.store(indices_ptr + rows, best_code.to(tl.int64), mask=row_mask)
    tl.store(dist_ptr + rows, out, mask=row_mask)


@triton.jit
def _prep_kernel(codes_ptr, stride_ck, stride_cd, mean_ptr, centred_ptr, norms_ptr, K, D,
                 ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """The old launcher's torch prologue in one launch: mean, contiguous centred codebook, norms."""
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < D
    mean = _codebook_mean(codes_ptr, stride_ck, stride_cd, K, D, ACC, BLOCK_K, BLOCK_D)
    codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (codes < K)[:, None] & dim_mask[None, :]
    e = tl.load(codes_ptr + codes[:, None] * stride_ck + dims[None, :] * stride_cd, mask=mask, other=0.0)
    e = tl.where(mask, e.to(ACC) - mean[None, :], 0.0)
    tl.store(centred_ptr + codes[:, None] * D + dims[None, :], e, mask=mask)
    tl.store(norms_ptr + codes, tl.sum(e * e, axis=1), mask=codes < K)
    if tl.program_id(0) == 0:
        tl.store(mean_ptr + dims, mean, mask=dim_mask)


def prep_launcher(old_kernel, bn: int, bk: int, nw: int, ns: int):
    """Two launches: `_prep_kernel`, then the old main kernel (precision "ieee")."""
    def run(z, codebook):
        n, d = z.shape
        k = codebook.shape[0]
        block_d = max(16, triton.next_power_of_2(d))
        acc = torch.promote_types(z.dtype, torch.float32)
        mean = torch.empty(d, dtype=acc, device=z.device)
        centred = torch.empty(k, d, dtype=acc, device=z.device)
        norms = torch.empty(k, dtype=acc, device=z.device)
        indices = torch.empty(n, dtype=torch.int64, device=z.device)
        out = torch.empty(n, dtype=acc, device=z.device)
        _prep_kernel[(triton.cdiv(k, 64),)](codebook, codebook.stride(0), codebook.stride(1), mean, centred, norms, k, d,
                                           ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_K=64, BLOCK_D=block_d)
        old_kernel[(triton.cdiv(n, bn),)](z, z.stride(0), z.stride(1), mean, centred, norms, indices, out, n, k, d,
                                          BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d, num_warps=nw, num_stages=ns)
        return indices, out.to(z.dtype)
    return run


def launcher(kernel, precision: str, bn: int, bk: int, nw: int, ns: int):
    """The module's launcher with the variant's kernel and meta-parameters."""
    def run(z, codebook):
        n, d = z.shape
        block_d = max(16, triton.next_power_of_2(d))
        wide = z.dtype == torch.float64
        indices = torch.empty(n, dtype=torch.int64, device=z.device)
        out = torch.empty(n, dtype=z.dtype, device=z.device)
        kernel[(triton.cdiv(n, bn),)](
            z, z.stride(0), z.stride(1), codebook, codebook.stride(0), codebook.stride(1), indices, out,
            n, codebook.shape[0], d, ACC=tl.float64 if wide else tl.float32, PRECISION="ieee" if wide else precision,
            BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d, num_warps=nw, num_stages=ns,
        )
        return indices, out
    return run


def load_old(path: str):
    spec = importlib.util.spec_from_file_location("old_nearest_code", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_LIB = torch.library.Library("pgtune", "DEF")


def as_op(name: str, fn):
    """`fn` behind the dispatcher, as register_kernel puts the module's launcher."""
    _LIB.define(f"{name}(Tensor z, Tensor codebook) -> (Tensor, Tensor)")
    _LIB.impl(name, fn, "CUDA")
    return getattr(torch.ops.pgtune, name)


def inputs(n, k, d, dtype=torch.float32, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, d, generator=g, dtype=torch.float64) + offset).to(dtype).cuda()
    codebook = (torch.randn(k, d, generator=g, dtype=torch.float64) + offset).to(dtype).cuda()
    return z, codebook


def exactness(z, codebook, idx, dist, ref_idx):
    """(rows differing from the reference, of those not near-ties, worst |dist - exact| / scale,
    worst excess of the chosen code's exact distance over the minimum / scale)."""
    zd, ed = z.double(), codebook.double()
    mean = ed.mean(0)
    zc, ec = zd - mean, ed - mean
    exact = (zc.pow(2).sum(1, keepdim=True) - 2 * zc @ ec.t() + ec.pow(2).sum(1)).clamp_min(0)
    scale = zc.pow(2).sum(1) + ec.pow(2).sum(1).max()
    two = exact.topk(min(2, exact.shape[1]), dim=1, largest=False).values
    gap = two[:, -1] - two[:, 0] if exact.shape[1] > 1 else torch.full_like(scale, float("inf"))
    differ = idx != ref_idx
    bad = differ & ~(gap <= 1e-5 * scale)
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    err = ((dist.double() - chosen).abs() / scale).max().item()
    excess = ((chosen - two[:, 0]) / scale).max().item()
    return int(differ.sum()), int(bad.sum()), err, excess


def gpu_test_rule(z, codebook, idx, dist, ref_idx, ref_dist):
    """tests/test_gpu.py's assertion, as a bool."""
    try:
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-4)
        differ = idx != ref_idx
        if differ.any():
            chosen = (z[differ] - codebook[idx[differ]]).pow(2).sum(1)
            torch.testing.assert_close(chosen, ref_dist[differ], rtol=1e-4, atol=1e-4)
            assert differ.float().mean() < 1e-3
        return True
    except AssertionError:
        return False


# (argmin, precision, BLOCK_N, BLOCK_K, warps, stages), in the order they are measured: the first of
# each kind early, so that a sweep cut short by its budget still compares the kinds. Offline (Triton
# 3.9, ptxas sm_90a) the running minimum at 64 x 64, 4 warps, used 255 registers and spilled 256
# bytes; the per-tile one spilled 948 there and 112 at 128 x 64, 8 warps; the old kernel used 216
# and none. Variants that spilled over 500 bytes are left out.
VARIANTS = [
    ("old", "ieee", 64, 64, 4, 3),
    ("running", "ieee", 64, 64, 4, 3),
    ("running", "tf32x3", 128, 64, 8, 3),
    ("running", "bf16x6", 128, 64, 8, 3),
    ("prep", "ieee", 64, 64, 4, 3),
    ("running", "ieee", 64, 64, 8, 2),
    ("per-tile", "tf32x3", 128, 64, 8, 3),
    ("per-tile", "bf16x6", 128, 64, 8, 3),
    ("running", "ieee", 32, 64, 4, 3),
    ("prep", "ieee", 128, 64, 8, 3),
    ("per-tile", "ieee", 128, 64, 8, 3),
    ("running", "ieee", 64, 32, 4, 3),
    ("prep", "ieee", 64, 32, 4, 3),
    ("running", "tf32x3", 64, 64, 4, 3),
    ("per-tile", "tf32x3", 64, 64, 4, 3),
    ("running", "bf16x6", 64, 64, 4, 3),
    ("per-tile", "bf16x6", 64, 64, 4, 3),
    ("running", "ieee", 128, 64, 8, 3),
    ("per-tile", "tf32x3", 128, 128, 8, 2),
    ("per-tile", "bf16x6", 128, 128, 8, 2),
]


def key_of(v) -> str:
    argmin, prec, bn, bk, nw, ns = v
    return f"{argmin}-{prec}-{bn}x{bk}-w{nw}-s{ns}"


def variant_fn(v, old):
    argmin, prec, bn, bk, nw, ns = v
    if argmin == "old":
        return old.nearest_code
    if argmin == "prep":
        return prep_launcher(old._nearest_code_kernel, bn, bk, nw, ns)
    return launcher(module._nearest_code_kernel if argmin == "running" else _per_tile_kernel, prec, bn, bk, nw, ns)


def _precompile(chunk, old_path):
    """Worker: compile `chunk`'s variants into Triton's disk cache (the sweep's shapes specialise as
    64 x 64 inputs do: every size and stride a multiple of 16, the inner strides 1)."""
    old = load_old(old_path)
    z, cb = inputs(64, 64, 64)
    for v in chunk:
        try:
            variant_fn(v, old)(z, cb)
        except Exception:  # reported when the sweep runs it
            pass
    torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True, help="the previous kernels/nearest_code.py, as the baseline")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=150.0, help="seconds; variants past it are skipped")
    p.add_argument("--jobs", type=int, default=8, help="processes compiling the variants first")
    args = p.parse_args()
    start = time.time()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as tests/test_gpu.py
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "sweep.md", "w")
    records = []

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    def save():
        (out / "sweep.json").write_text(json.dumps(records, indent=1))

    say(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    if args.jobs > 1:
        try:
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_precompile, [VARIANTS[i::args.jobs] for i in range(args.jobs)], [args.old] * args.jobs))
            say(f"compiled in {time.time() - start:.0f} s")
        except Exception as e:  # the sweep compiles what is missing itself
            say(f"precompiling failed after {time.time() - start:.0f} s: {type(e).__name__}: {str(e)[:200]}")
    old = load_old(args.old)
    data = {s: inputs(*s) for s in SHAPES}
    ref = {s: reference.nearest_code(*data[s]) for s in SHAPES}
    for s in SHAPES:
        z, cb = data[s]
        d, b, err, exc = exactness(z, cb, *ref[s], ref[s][0])
        say(f"reference N={s[0]}: worst |dist - exact| / scale {err:.1e}")

    say("| argmin | precision | BN | BK | warps | stages | N | kernel us | differ | not near-tie | worst err/scale | excess/scale |")
    say("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fns = {}
    for v in VARIANTS:
        argmin, prec, bn, bk, nw, ns = v
        if time.time() - start > args.budget:
            say(f"budget spent: skipped {key_of(v)}")
            continue
        try:
            fn = variant_fn(v, old)
            for s in SHAPES:
                z, cb = data[s]
                idx, dist = fn(z, cb)
                d, b, err, exc = exactness(z, cb, idx, dist, ref[s][0])
                t = do_bench_cudagraph(lambda: fn(z, cb), rep=30, quantiles=[0.5])
                records.append(dict(key=key_of(v), argmin=argmin, precision=prec, bn=bn, bk=bk, warps=nw, stages=ns,
                                    n=s[0], kernel_us=t * 1e3, differ=d, bad=b, err=err, excess=exc))
                say(f"| {argmin} | {prec} | {bn} | {bk} | {nw} | {ns} | {s[0]} | {t * 1e3:.1f} | {d} | {b} | {err:.1e} | {exc:.1e} |")
            fns[key_of(v)] = fn
        except Exception as e:  # a variant that does not compile or launch is a row, not the end of the sweep
            say(f"| {argmin} | {prec} | {bn} | {bk} | {nw} | {ns} | - | FAILED: {type(e).__name__}: {str(e)[:200]} |")
    save()

    # The whole op, as `pegasus bench nearest-code` times it, for the baseline and the fastest
    # variants without a row off the near-tie rule (by their kernel times summed over both N).
    def total(key):
        return sum(r["kernel_us"] for r in records if r["key"] == key)

    exact_keys = sorted((k for k in fns if not any(r["bad"] for r in records if r["key"] == k)), key=total)
    chosen = ["old-ieee-64x64-w4-s3"]
    for prec in ("ieee", "tf32x3", "bf16x6"):
        chosen += [k for k in exact_keys if f"-{prec}-" in k and k not in chosen][:2 if prec == "ieee" else 1]
    say("")
    say("| op | N | p50 us (do_bench) | speedup vs reference |")
    say("| --- | ---: | ---: | ---: |")
    settle = reference.settle_overflow_rows
    for s in SHAPES:
        z, cb = data[s]
        t_ref = do_bench(lambda: reference.nearest_code(z, cb), quantiles=[0.5])
        say(f"| reference | {s[0]} | {t_ref * 1e3:.1f} | 1.00x |")
        idx, dist = ref[s]
        t_settle = do_bench(lambda: settle(z, cb, idx, dist), quantiles=[0.5])
        say(f"| settle_overflow_rows alone | {s[0]} | {t_settle * 1e3:.1f} | |")
        for i, key in enumerate(chosen):
            if key not in fns:
                continue
            if f"op-{key}" not in fns:
                fns[f"op-{key}"] = as_op(f"v{i}", fns[key])
            op = fns[f"op-{key}"]
            t = do_bench(lambda: settle(z, cb, *op(z, cb)), quantiles=[0.5])
            t_bare = do_bench(lambda: op(z, cb), quantiles=[0.5])
            say(f"| {key} (+ settle) | {s[0]} | {t * 1e3:.1f} | {t_ref / t:.2f}x |")
            say(f"| {key} (dispatch + launch only) | {s[0]} | {t_bare * 1e3:.1f} | {t_ref / t_bare:.2f}x |")
            records.append(dict(key=key, n=s[0], full_us=t * 1e3, bare_us=t_bare * 1e3, reference_us=t_ref * 1e3,
                                settle_us=t_settle * 1e3))
    save()

    # tests/test_gpu.py's shapes and rule, and a 1e3 offset, for the module's launcher (float32 and
    # float64) and for the fastest variant of each tensor-core precision (float32: float64 is "ieee").
    say("")
    tc = [k for k in chosen if "-tf32x3-" in k or "-bf16x6-" in k]
    for key in ["module"] + tc:
        fn = module.nearest_code if key == "module" else fns[key]
        verdicts = []
        for n, k, d in TEST_SHAPES:
            for dtype in (torch.float32, torch.float64) if key == "module" else (torch.float32,):
                try:
                    z, cb = inputs(n, k, d, dtype, seed=n + k + d)
                    r_idx, r_dist = reference.nearest_code(z, cb)
                    ok = gpu_test_rule(z, cb, *fn(z, cb), r_idx, r_dist)
                except Exception as e:
                    ok = f"{type(e).__name__}: {str(e)[:120]}"
                verdicts.append(f"{n}x{k}x{d} {str(dtype)[6:]}: {ok}")
        z, cb = inputs(4096, 128, 64, torch.float32, offset=1e3)
        idx, dist = fn(z, cb)
        exact_idx = torch.cdist(z.double(), cb.double()).argmin(1)
        d_, b_, err, exc = exactness(z, cb, idx, dist, exact_idx)
        verdicts.append(f"offset 1e3: differ {d_}, not near-tie {b_}, err {err:.1e}")
        say(f"test_gpu rule, {key}: " + "; ".join(verdicts))
    say(f"elapsed {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
