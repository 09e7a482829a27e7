"""Reproductions of published experiments (used by the command line)."""
