"""Host fleets: SSH sessions with verified host keys, health facts, and (later) patch waves."""
