"""pixelmill's reliability suite: fault matrix, crash safety, interrupts, the bad-input corpus (tests/data/bad),
security checks and property tests.

Helpers beside the tests: `policy` (the retry policy as an oracle over the emulator's log), `invariants` (what a
run directory must hold after anything, a kill included), `runs` (in-process runs for either wire family),
`launch` (the command with a kill point armed inside pixelmill's code path), `hostile_servers` (a gateway that
echoes keys, an image host that stalls, drips, lies about sizes and redirects).
"""
