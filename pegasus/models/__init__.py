from pegasus.models.quantizer import QuantizerOutput, VectorQuantizer
from pegasus.models.vqvae import VQVAE, VQVAEConfig, VQVAEOutput

__all__ = ["QuantizerOutput", "VectorQuantizer", "VQVAE", "VQVAEConfig", "VQVAEOutput"]
