from pegasus.models.pixelcnn import GatedPixelCNN, PixelCNNConfig
from pegasus.models.quantizer import QuantizerOutput, VectorQuantizer
from pegasus.models.vqvae import VQVAE, VQVAE2, VQVAEConfig, VQVAEOutput, build_vqvae

__all__ = ["GatedPixelCNN", "PixelCNNConfig", "QuantizerOutput", "VectorQuantizer", "VQVAE", "VQVAE2", "VQVAEConfig", "VQVAEOutput", "build_vqvae"]
