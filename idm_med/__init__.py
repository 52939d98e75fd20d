"""idm-med: Invertible Diffusion Models for compressed-sensing reconstruction."""

__version__ = "0.1.0"
