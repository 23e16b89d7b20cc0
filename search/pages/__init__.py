"""Pages about studies: one study's HTML report (`search.report`) and every study side by side
(`search.compare`)."""
