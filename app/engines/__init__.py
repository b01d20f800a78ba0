"""Pure PyTorch/Pillow engines: GAN sampling, image encoding. No HTTP, no threads."""
