"""Patch waves: OS updates across a fleet in canary-first batches (see the runbook patch_wave__<fleet>).

Pure planning (baseline, snapshot, waves, window, compliance) lives apart from the code that acts on
hosts over SSH; both speak the value types of :mod:`cloudops.patching.model`.
"""
