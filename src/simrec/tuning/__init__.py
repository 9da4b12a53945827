"""Hyperparameter search: the space from conf/, trials as nested MLflow runs, SparkTrials."""
