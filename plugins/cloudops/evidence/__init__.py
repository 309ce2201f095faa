"""Compliance evidence: the hash-chained ledger, its shipping to S3, evidence packs, the auditor view."""
