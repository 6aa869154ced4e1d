"""pegasus: white winged horses from a VQ-VAE and an autoregressive prior over its latents."""
from pegasus import ops
from pegasus.backend import resolve_backend
from pegasus.models import VQVAE, VectorQuantizer, VQVAEConfig

__version__ = "0.1.0"
__all__ = ["ops", "resolve_backend", "VQVAE", "VQVAEConfig", "VectorQuantizer", "__version__"]
