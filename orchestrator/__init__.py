"""Cinder-compatible volume backup orchestrator."""

__version__ = "0.1.0"
