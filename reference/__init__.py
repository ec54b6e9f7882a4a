"""llm-from-scratch's reference package: the integrated, production-quality implementation."""

__version__ = "0.1.0"
