"""The local sandbox estate: real PostgreSQL, MariaDB, sshd, SMTP and an S3-compatible endpoint on loopback.

`cloudops.sandbox.estate` holds the public API (`up`, `down`, `status`, `format_status`); each other module
looks after one component or one concern (paths and ports, pid files, credentials, seed data). This package
imports nothing on purpose, so that `python -m cloudops.sandbox.smtp` runs without side effects.
"""
