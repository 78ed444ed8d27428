"""Checkpoint I/O: reference resolution, lazy reading and atomic streaming writing."""

from .reader import CheckpointReader, InMemoryReader
from .resolve import ResolvedModel, resolve_model
from .writer import ShardedSafetensorsWriter, atomic_output_dir, check_output_dir, parse_size

__all__ = ["CheckpointReader", "InMemoryReader", "ResolvedModel", "ShardedSafetensorsWriter",
           "atomic_output_dir", "check_output_dir", "parse_size", "resolve_model"]
