"""Figures are drawn with matplotlib's Agg backend (no screen); one way to get pyplot."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
