"""Typed config building blocks shared by the commands (each command's own config lives in its package)."""
