"""Prefect tasks: one per pipeline step. Each calls into mlcore and logs to MLflow."""
