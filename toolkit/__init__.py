"""AppStack toolkit: snapshot, verify and restore App Volumes volumes."""

__version__ = "0.1.0"
