"""Backup repositories: retention planning now, and (later) the code that lists and deletes backups."""
