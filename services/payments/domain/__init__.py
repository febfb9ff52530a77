"""Domain of the payments service; for now only the events other services consume."""
