"""Atelier: image generation (GAN sampling, neural style transfer) on an async GPU worker pool."""

__version__ = "0.1.0"
