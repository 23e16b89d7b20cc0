"""What a finished study leaves for a user: the test evaluation, the export (best.json, model.pt,
reports), pictures, and the provenance every artifact carries."""
