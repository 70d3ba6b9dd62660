"""Throwaway servers for the tests, the tour and the benchmark: a PostgreSQL cluster of
any installed or downloaded major (``postgres``, ``majors``) and an S3 server (``s3``,
SeaweedFS's ``weed mini``), each started in a temporary directory and removed after.
Not part of the installed package: run from a checkout."""
