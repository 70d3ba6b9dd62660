"""Where backups live and how their bytes are written and read: the store interface (a local
directory, S3, memory), the backup layer above it (compression, hashing, encryption),
claims and commit, retention."""
