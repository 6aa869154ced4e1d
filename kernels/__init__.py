"""Triton kernels of pegasus, installed as `pegasus.kernels`.

Each kernel module attaches a CUDA implementation to an existing `pegasus::<op>` with
`torch.library`. None is written yet: the nearest-code and masked-convolution kernels come with
their issues, and until then `backend="triton"` raises (see `pegasus.backend`).
"""

KERNELS: tuple[str, ...] = ()
"""Names of the `pegasus::` ops that have a Triton kernel in this build."""
