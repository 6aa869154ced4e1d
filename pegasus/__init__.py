"""pegasus: white winged horses from a VQ-VAE and an autoregressive prior over its latents."""
from pegasus import backends, ops
from pegasus.models import VQVAE, GatedPixelCNN, PixelCNNConfig, VectorQuantizer, VQVAEConfig
from pegasus.pretrained import pretrained
from pegasus.rundir import Run, load_run
from pegasus.sampling import SamplingOptions, sample_indices

from pegasus._version import __version__
__all__ = [
    "backends",
    "ops",
    "GatedPixelCNN",
    "PixelCNNConfig",
    "Run",
    "SamplingOptions",
    "VQVAE",
    "VQVAEConfig",
    "VectorQuantizer",
    "load_run",
    "pretrained",
    "sample_indices",
    "__version__",
]
