"""Checkpoint IO: lazy per-tensor reads, streaming safetensors writes, atomic output directories."""
