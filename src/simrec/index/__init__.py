"""faiss index over item embeddings."""
