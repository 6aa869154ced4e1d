from pegasus.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from pegasus.models.quantizer import QuantizerOutput, VectorQuantizer
from pegasus.models.vqvae import VQVAE, VQVAEConfig, VQVAEOutput

__all__ = ["GatedPixelCNN", "PixelCNNConfig", "QuantizerOutput", "VectorQuantizer", "VQVAE", "VQVAEConfig", "VQVAEOutput"]
