"""Triton kernels of pegasus, installed as `pegasus.kernels`.

Each kernel module (`pegasus.kernels.<op>`) holds the `@triton.jit` kernels, their launchers and, on
import, the registration of the launchers as the CUDA kernels of the `pegasus::` ops they implement
(`torch.library.register_kernel`; the schemas come from C++). Which op has which backend is the
table in `pegasus.backends`, which imports these modules when the "triton" backend is chosen, so
`import pegasus` does not import Triton. On CPU tensors the launchers run only under
TRITON_INTERPRET=1, called directly by `pegasus.ops`.
"""
