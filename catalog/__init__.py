"""The content-addressed store and its catalog: chunks, packs, snapshots, locks.

Knows nothing of vSphere, networks or the command line.
"""
