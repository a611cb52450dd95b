"""A job's config: the schema (every key, once), its checks, `--help`, and its identity (hash, stored form).
Imports no torch, and nothing of the job, the cli or the results."""
