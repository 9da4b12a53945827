"""Complete the look: Gram-matrix style features, per-category indexes, HR@n against rooms."""
