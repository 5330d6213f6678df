"""The engine, one owner per concern:

- `runner`: the flow of rows (producer, workers, drain, stop) over one `RunContext` (`context`);
- `row`: one row's steps, fallbacks, turns and calls, its image files and journal entries;
- `call`: one call with its retries, yielding an answer or a failure with the attempts made;
- `admission`: one call's budget reservation and concurrency slot, held and released together;
- `budget`, `limiter`, `retry`: the budget, the pace (slots, rates, 429 pause) and the retry policy;
- `plan`: providers, models and wire plans, checked before anything is opened (also used by `estimate`);
- `inputs`, `outcome`, `stats`: a row's inputs for a step, what an answer adds to its record, live counters.
"""
