"""Delta lakehouse: tables, ingestion of Fashion-MNIST and the IKEA catalog."""
