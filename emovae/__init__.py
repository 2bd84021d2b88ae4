"""emovae: a convolutional VAE for emotional-speech log-mel spectrograms."""

__version__ = "0.1.0"
