"""pixelmill: datasets of prompts and images in, datasets of generated and edited images out."""

__version__ = "0.1.0"
