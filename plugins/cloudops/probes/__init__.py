"""Availability probes: one sample per SLO target per minute, kept durably in a sample store."""

from __future__ import annotations
