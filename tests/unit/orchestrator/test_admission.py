"""Admission of deploys: never more than the limit at once, first come first served, bounded holds."""

import asyncio

from scheduler.orchestrator.admission import Admission, cpu_limit


async def test_at_most_limit_run_at_once_in_arrival_order() -> None:
    admission = Admission(limit=2, hold=60)
    running: list[int] = []
    peak = 0
    order: list[int] = []

    async def deploy(n: int) -> None:
        nonlocal peak
        async with admission.slot():
            order.append(n)
            running.append(n)
            peak = max(peak, len(running))
            await asyncio.sleep(0.01)
            running.remove(n)

    tasks = []
    for n in range(8):
        tasks.append(asyncio.create_task(deploy(n)))
        await asyncio.sleep(0)  # arrive one after another
    await asyncio.gather(*tasks)
    assert peak == 2
    assert order == list(range(8))
    assert admission.active == 0 and admission.waiting == 0


async def test_a_slot_held_too_long_lets_the_next_one_in() -> None:
    admission = Admission(limit=1, hold=0.05)
    slow_started = asyncio.Event()
    release_slow = asyncio.Event()

    async def slow() -> None:
        async with admission.slot():
            slow_started.set()
            await release_slow.wait()

    slow_task = asyncio.create_task(slow())
    await slow_started.wait()
    # The next one gets in although the slow one still runs, once its hold time passed.
    async with asyncio.timeout(5):
        async with admission.slot():
            assert admission.active == 1
    release_slow.set()
    await slow_task
    assert admission.active == 0


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    admission = Admission(limit=1, hold=60)
    gate = asyncio.Event()
    got: list[str] = []

    async def holder() -> None:
        async with admission.slot():
            await gate.wait()

    async def waiter(name: str) -> None:
        async with admission.slot():
            got.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(waiter("cancelled"))
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    await asyncio.gather(first, second, cancelled, return_exceptions=True)
    assert got == ["second"]
    assert admission.active == 0 and admission.waiting == 0


def test_the_default_limit_follows_the_cpus() -> None:
    assert cpu_limit(3) == 3
    assert cpu_limit(0) >= 2


async def test_the_queue_admits_deploys_but_never_holds_back_a_delete() -> None:
    from scheduler.orchestrator.observer import NULL_OBSERVER
    from scheduler.orchestrator.queue import OperationQueue

    class Nothing:
        def find(self, name: str) -> None:
            return None

    admission = Admission(limit=1, hold=60)
    queue = OperationQueue(Nothing(), NULL_OBSERVER, admission)
    gate = asyncio.Event()
    ran: list[str] = []

    async def blocked() -> None:
        ran.append("a")
        await gate.wait()

    async def record(what: str) -> None:
        ran.append(what)

    queue.submit("deploy", "a", blocked)
    queue.submit("deploy", "b", lambda: record("b"))
    queue.submit("delete", "c", lambda: record("c"))
    async with asyncio.timeout(5):
        while "c" not in ran:
            await asyncio.sleep(0.001)
    assert ran == ["a", "c"]  # b waits for a's slot; the delete did not wait
    gate.set()
    async with asyncio.timeout(5):
        await queue.wait_idle("b")
    assert ran == ["a", "c", "b"]
