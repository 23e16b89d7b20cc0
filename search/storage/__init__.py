"""Optuna storages: checking and opening URLs, the workers' batched trial writes, running trials'
heartbeats and the gRPC proxy (`search.serve`)."""
