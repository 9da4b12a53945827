"""Retrieval metrics, baselines and plots."""
