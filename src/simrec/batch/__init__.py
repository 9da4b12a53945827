"""Batch jobs on Spark over whole tables (batch recommendations)."""
