"""pegasus: white winged horses from a VQ-VAE and an autoregressive prior over its latents."""
from pegasus import ops
from pegasus.backend import resolve_backend
from pegasus.models import VQVAE, GatedPixelCNN, PixelCNNConfig, VectorQuantizer, VQVAEConfig
from pegasus.pretrained import pretrained
from pegasus.run import Run, load_run
from pegasus.sampling import sample_indices

__version__ = "0.1.0"
__all__ = [
    "ops",
    "resolve_backend",
    "GatedPixelCNN",
    "PixelCNNConfig",
    "Run",
    "VQVAE",
    "VQVAEConfig",
    "VectorQuantizer",
    "load_run",
    "pretrained",
    "sample_indices",
    "__version__",
]
