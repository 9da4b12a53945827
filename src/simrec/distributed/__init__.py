"""Horovod-on-Spark data-parallel training, each rank streaming its own shard of a Delta table."""
