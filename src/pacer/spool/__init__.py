"""The spool: folders, claims and durable moves, job files, and result files."""
