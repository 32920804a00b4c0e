"""The faults suite: each case injects one fault into a real run and checks that nothing already
written is lost and that the error names what failed (docs/faults.md)."""
