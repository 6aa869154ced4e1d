"""`pegasus info`: what this install and machine run, and what each choice defaults to here."""
from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="versions, the C++ extension, the CPU, every backend and the "
                       "defaults here (backend, training precision)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pegasus import __version__, _extension, backends
    from pegasus.machine import BUSY_REGION_S, cpu_isa, cpu_name, isa_text, parallel_region_s
    from pegasus.rundir import WEIGHTS_DIR
    from pegasus.training import bf16_supported, resolve_precision

    print(f"pegasus {__version__}, torch {torch.__version__}")
    if _extension.has_cpp_ops():
        # Which build of the C++ steps' vector code runs (csrc/cpu/vec_kernels.cpp).
        ext = f"loaded (CPU kernels built for {torch.ops.pegasus._cpu_capability()}; ATEN_CPU_CAPABILITY lowers it)"
    else:
        ext = f"NOT loaded: {_extension.cpp_load_error()}"
    print(f"C++ extension pegasus._C: {ext}")
    isa, source = cpu_isa()
    print(f"CPU: {cpu_name()}: {isa_text(isa)} ({source}); torch's CPU kernels built for {torch.backends.cpu.get_cpu_capability()}")
    threads = torch.get_num_threads()
    if threads > 1:
        region = parallel_region_s()
        busy = ": another process is using a core (pegasus.machine)" if region > BUSY_REGION_S else ""
        print(f"threads: {threads}; a parallel region of them takes {region * 1e3:.2f} ms{busy}")
    else:
        print("threads: 1")
    print(f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    # What train-vqvae, train-prior and train-classifier pick without --precision (--device auto).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    why = bf16_supported(device)[1]
    print(f"training precision (auto, {device}): {resolve_precision(None, device)}, because {why}")
    print("backends:")
    for line in backends.describe():
        print(f"  {line}")
    shipped = "present" if (WEIGHTS_DIR / "prior.safetensors").is_file() else "MISSING"
    print(f"pretrained weights ({WEIGHTS_DIR}): {shipped}")
    return 0
