"""Admission of deploys: never more than the limit at once, first come first served, bounded holds."""

import asyncio

from scheduler.orchestrator.admission import Admission, for_host


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


def test_the_default_limit_follows_the_cpus_and_a_configured_one_is_fixed() -> None:
    fixed = for_host(3, hold=10)
    assert (fixed.limit, fixed.ceiling) == (3, 3)
    auto = for_host(0, hold=10)
    assert auto.limit >= 2 and auto.ceiling == 16 * auto.limit and auto.growth == 2


async def test_the_limit_grows_as_deploys_end_and_starts_low_again_when_idle() -> None:
    admission = Admission(2, hold=60, ceiling=4)
    gates, inside, tasks = _gated(admission, 8)
    await asyncio.sleep(0.01)
    assert inside == {0, 1}
    gates[0].set()  # one ends: the limit grows to 3, so two more come in
    await asyncio.sleep(0.01)
    assert inside == {1, 2, 3} and admission.limit == 3
    gates[1].set()
    gates[2].set()
    await asyncio.sleep(0.01)
    assert admission.limit == 4 and len(inside) == 4  # the ceiling
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert admission.limit == 2 and admission.active == 0


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


async def test_the_limit_grows_by_its_growth_and_stops_at_the_ceiling() -> None:
    admission = Admission(2, hold=60, ceiling=5, growth=2)
    gates, inside, tasks = _gated(admission, 8)
    await asyncio.sleep(0.01)
    assert inside == {0, 1}
    gates[0].set()  # one ends: the limit grows by two, so three more come in
    await asyncio.sleep(0.01)
    assert admission.limit == 4 and inside == {1, 2, 3, 4}
    gates[1].set()  # the next would make it 6: the ceiling holds it at 5
    await asyncio.sleep(0.01)
    assert admission.limit == 5 and inside == {2, 3, 4, 5, 6}
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert admission.limit == 2 and admission.active == 0


def _gated(admission: Admission, count: int) -> tuple[list[asyncio.Event], set[int], list[asyncio.Task[None]]]:
    """``count`` deploys, each holding its slot until its gate opens; ``inside`` holds those admitted."""
    gates = [asyncio.Event() for _ in range(count)]
    inside: set[int] = set()

    async def deploy(n: int) -> None:
        async with admission.slot():
            inside.add(n)
            await gates[n].wait()
            inside.discard(n)

    return gates, inside, [asyncio.create_task(deploy(n)) for n in range(count)]
