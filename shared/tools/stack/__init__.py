"""The stack on one machine: the Procfile's processes, the embedded Postgres and Redis, the
services a command needs, `chordline up` and its supervisor, `chordline doctor`'s stack
checks, and the gate in front of Flower."""
