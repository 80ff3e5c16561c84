"""valence-pipeline: the application layer (settings, CLI, local services, logging)."""

__version__ = "0.1.0"
