"""The jobs behind the CLI verbs: plain functions that return reports."""
