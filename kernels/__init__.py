"""Triton kernels of pegasus, installed as `pegasus.kernels`.

Each kernel module (`pegasus.kernels.<op>`) holds the `@triton.jit` kernel, its launcher and, on
import, the registration of the launcher as the CUDA kernel of `pegasus::<op>` through
`torch.library.register_kernel` (the schema comes from C++). `pegasus.ops` imports the module when
the "triton" backend is chosen, so `import pegasus` does not import Triton. On CPU tensors the
launchers run only under TRITON_INTERPRET=1 (see `pegasus.backend`).
"""

KERNELS: tuple[str, ...] = ("nearest_code", "sample_row_triton", "sample_position_triton")
"""Names of the `pegasus::` ops that have a Triton kernel in this build."""
