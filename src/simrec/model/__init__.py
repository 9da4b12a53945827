"""Similarity model: backbone, embedding head, data feeding, training."""
