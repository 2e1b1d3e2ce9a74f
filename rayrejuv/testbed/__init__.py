"""Tiny, locally built models, tokenizers and tasks (nothing is downloaded)."""
