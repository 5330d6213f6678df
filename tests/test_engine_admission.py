"""The admission ticket owns a call's concurrency slot and budget reservation: leaving its `async with` gives
both back, whatever ends the block (an exception, a cancellation, a settle with the real cost)."""

from __future__ import annotations

import asyncio

import pytest

from pixelmill.engine.admission import Admission
from pixelmill.engine.budget import Budget
from pixelmill.engine.limiter import Limiter
from pixelmill.errors import BudgetReached


def gate(concurrency: int = 1, limit: float | None = 1.0, spent: float = 0.0) -> Admission:
    return Admission(Limiter(concurrency, None, None), Budget(limit, spent=spent), asyncio.Event())


def slot_free(admission: Admission) -> bool:
    return not admission.limiter.slots.locked()


async def test_a_ticket_holds_a_slot_and_a_reservation_until_it_is_left() -> None:
    admission = gate()
    async with admission.ticket(images=1, reserve=0.4) as ticket:
        assert admission.budget.reserved == pytest.approx(0.4)
        assert not slot_free(admission)
        ticket.settle(0.25)
        assert (admission.budget.reserved, admission.budget.spent) == (0.0, 0.25)
        with pytest.raises(RuntimeError):  # a second settle would lose a charge
            ticket.settle(0.1)
    assert slot_free(admission)
    assert admission.budget.spent == 0.25


async def test_an_exception_gives_back_the_slot_and_the_reservation() -> None:
    admission = gate()
    with pytest.raises(ValueError, match="boom"):
        async with admission.ticket(images=1, reserve=0.4):
            raise ValueError("boom")
    assert slot_free(admission)
    assert (admission.budget.reserved, admission.budget.spent) == (0.0, 0.0)


async def test_a_cancelled_holder_gives_back_the_slot_and_the_reservation() -> None:
    admission = gate()
    inside = asyncio.Event()

    async def hold() -> None:
        async with admission.ticket(images=1, reserve=0.4):
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await inside.wait()
    assert admission.budget.reserved == pytest.approx(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slot_free(admission)
    assert (admission.budget.reserved, admission.budget.spent) == (0.0, 0.0)


async def test_cancelled_while_waiting_for_a_slot_the_reservation_is_given_back() -> None:
    admission = gate(concurrency=1, limit=1.0)
    async with admission.ticket(images=1, reserve=0.2):
        async def wait_for_slot() -> None:
            async with admission.ticket(images=1, reserve=0.3):
                raise AssertionError("let in while the only slot is held")

        task = asyncio.create_task(wait_for_slot())
        await asyncio.sleep(0.01)
        assert not task.done()
        assert admission.budget.reserved == pytest.approx(0.5)  # reserved first, then waits for the slot
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert admission.budget.reserved == pytest.approx(0.2)
    assert slot_free(admission)
    assert admission.budget.reserved == 0.0


async def test_waiting_for_budget_holds_no_slot_and_a_call_that_cannot_fit_takes_nothing() -> None:
    admission = gate(concurrency=2, limit=1.0, spent=0.5)
    with pytest.raises(BudgetReached):
        async with admission.ticket(images=1, reserve=0.6):
            raise AssertionError("let in past the budget")
    assert admission.budget.reserved == 0.0
    assert admission.limiter.slots._value == 2  # type: ignore[attr-defined]
    async with admission.ticket(images=1, reserve=0.3) as first:
        waiting = asyncio.create_task(admission.ticket(images=1, reserve=0.3).__aenter__())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the rest of the budget is held by the call in flight
        assert admission.limiter.slots._value == 1  # type: ignore[attr-defined]
        first.settle(0.1)  # it cost less than it reserved: the waiting call fits now
        second = await asyncio.wait_for(waiting, 1.0)
        await second.__aexit__(None, None, None)
    assert admission.limiter.slots._value == 2  # type: ignore[attr-defined]
    assert admission.budget.reserved == 0.0
    assert admission.budget.spent == pytest.approx(0.6)
