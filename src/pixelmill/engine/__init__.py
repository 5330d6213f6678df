"""The engine: what runs a `RunConfig` once it is planned.

- `plan.py`: providers, models, wire plans and fallbacks, checked before anything is opened (`estimate` uses it too);
- `runner.py`: the flow of rows: a producer reads the source in chunks and finds each row's journal entry, workers
  carry rows through their steps, a stop drains the calls in flight;
- `row.py`: one row's steps, fallback models and conversation turns; `inputs.py`: a step's prompt and images;
- `call.py`: one call with its retries; `admission.py`: a call's concurrency slot and budget reservation, owned
  by one object; `budget.py`, `limiter.py` (pacing, the 429 pause), `retry.py` (when to try again);
- `outcome.py`: what an answer adds to a row's metadata; `context.py`: the run's shared state; `stats.py`.
"""
