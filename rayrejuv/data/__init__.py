"""Datasets read by the commands (jsonl files)."""
