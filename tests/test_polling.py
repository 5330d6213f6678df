"""The poll schedule of remote jobs (engine/polling.py): the provider's back-off until the clock knows the model,
then the first poll a little before the usual end and small steps after it."""

from __future__ import annotations

from itertools import islice

from pixelmill.engine.polling import MAX_STEP, MIN_STEP, WARM, PollClock


def backoff(polls: int) -> float:
    return min(5.0, 0.5 * 1.5**polls)


def test_the_providers_backoff_until_enough_jobs_ended() -> None:
    clock = PollClock()
    for _ in range(WARM - 1):
        clock.learn("m", 1.9, 2.1)
    assert list(islice(clock.delays("m", backoff), 4)) == [backoff(i) for i in range(4)]


def test_learned_jobs_are_polled_just_before_their_usual_end_then_in_small_steps() -> None:
    clock = PollClock()
    for end in (18.0, 19.0, 20.0, 21.0, 22.0, 20.0, 19.5, 20.5):
        clock.learn("slow", end - 0.5, end + 0.5)
    first, *steps = islice(clock.delays("slow", backoff), 6)
    usual = clock.usual("slow")
    assert usual is not None and 18.0 <= usual <= 20.5
    assert 0.8 * usual <= first < usual  # a little before the usual end, not at the back-off's 0.5 s
    assert all(MIN_STEP <= s <= MAX_STEP for s in steps)
    assert steps == sorted(steps)  # a job running long is polled less and less often
    # A 20 s job is found within a few polls (the back-off takes 8), and within a tenth of its time or so.
    times = [first]
    for s in steps:
        times.append(times[-1] + s)
    found = next(i for i, t in enumerate(times) if t >= 20.0)
    assert found + 1 <= 4 and times[found] - 20.0 <= 3.0


def test_models_are_learned_apart_and_a_job_of_an_earlier_run_is_polled_by_the_backoff() -> None:
    clock = PollClock()
    for _ in range(WARM):
        clock.learn("fast", 1.0, 1.2)
    assert clock.usual("other") is None
    assert next(clock.delays("other", backoff)) == backoff(0)
    assert next(clock.delays("fast", backoff, elapsed=None)) == backoff(0)  # submit time unknown
    assert next(clock.delays("fast", backoff, elapsed=600.0)) == 0.0  # long past its usual end: poll now
