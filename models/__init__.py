"""The embedding side: templates, prompt tokenization, pooling and :class:`EchoEncoder`."""

from models.encoder import EchoEncoder

__version__ = "0.2.0"
__all__ = ["EchoEncoder", "__version__"]
