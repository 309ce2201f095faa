"""Backup repositories in object storage.

``layout`` (where keys go), ``manifest`` (what a complete backup records), ``pipeline`` (a dump streamed
through zstd into a multipart upload), ``s3`` (store, lock, list, verify, delete) and ``retention``
(which backups to keep, pure).
"""
