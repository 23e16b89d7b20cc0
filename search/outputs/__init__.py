"""What a finished study produces: evaluation, exports, retraining, reports, pictures, provenance."""
