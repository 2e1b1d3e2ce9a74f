"""Drivers that read like the algorithm."""
