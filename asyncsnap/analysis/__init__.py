"""Reading backups for answers: our checked reader hands Arrow batches to DuckDB for diff,
compare, convert and the typed views."""
