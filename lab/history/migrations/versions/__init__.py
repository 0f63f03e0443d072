"""The revisions, oldest first: r0001 (the tables), r0002 (fingerprints, the trend index)."""
