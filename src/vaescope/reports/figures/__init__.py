"""Figures: data in, matplotlib figure out. Nothing here computes a metric."""
