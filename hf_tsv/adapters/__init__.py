"""Per-architecture key rules. A new architecture is one new file exposing the ClipVisionAdapter interface."""

from .clip import ADAPTERS, ClipVisionAdapter

__all__ = ["ADAPTERS", "ClipVisionAdapter"]
