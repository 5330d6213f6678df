"""pixelmill's reliability suite: fault matrix, crash safety, interrupts, the bad-input corpus, security checks
and property tests. Small helpers live beside the tests: `policy` (what the retry policy allows a row),
`invariants` (what a run directory must hold after anything), `launch` (runs with kill points)."""
