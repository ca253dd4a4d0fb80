"""The five architectures of minivit, each in its own file, and the registry."""
from .registry import create_model, list_models, register_model

# Importing the model files registers their configurations.
from . import vit, mlp_mixer, ceit, botnet, maxvit  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model"]
