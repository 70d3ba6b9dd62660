"""Row encoders: how a table's rows become the format's NDJSON lines (the native converter's
bindings, the server-rendered SQL, rows too big for one value) and their fingerprints."""
