"""simrec: image-similarity product recommender."""

__version__ = "0.1.0"
