"""Sub-commands of `chordline`, one module per area; shared/cli.py assembles them."""
