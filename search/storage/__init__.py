"""Optuna storages: checking and opening URLs, and the workers' batched trial writes."""
