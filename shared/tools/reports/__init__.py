"""Reports read by people: a turn's trace drawn on a terminal (`chordline trace`), which stage
the last turns waited on (`chordline critical-path`), how a tenant's knowledge levels and
routing hold on labelled questions (`chordline kb eval`), and what a re-scoring run found
(`chordline rescore report`)."""
