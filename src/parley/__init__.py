"""parley: a self-hostable AI-assistant backend."""

__version__ = "0.1.0"
