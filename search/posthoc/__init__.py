"""What trains after a search: certifying the winner with fresh seeds, auditing the pruner, and
retraining an exported config (`search.certify`, `search.audit`, `search.retrain`)."""
