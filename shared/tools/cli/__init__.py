"""The `chordline` command: main.py assembles it from one module of sub-commands per area,
and common.py holds what they share."""
