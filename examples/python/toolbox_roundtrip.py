"""The scheduler from Python: create, wait, update one variable, replay events, delete.

With the client library: create a toolbox environment, wait for it to run, change one env
variable with a field mask, replay what happened from the event log, delete it.

    .venv/bin/python examples/python/toolbox_roundtrip.py --address 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio

from scheduler.api._gen.scheduler.v1 import scheduler_pb2 as pb
from scheduler.client import ApiError, SchedulerClient


async def main(address: str, name: str) -> None:
    async with SchedulerClient.connect(address) as client:
        # Where the event log stands now: a heartbeat carries its latest sequence.
        watch = client.events(name, heartbeats=True, heartbeat_interval=1.0)
        start = (await anext(watch)).sequence
        await watch.aclose()

        created = await client.create(name, "toolbox")
        print(f"created {created.name}")
        async with asyncio.timeout(120):
            env = await client.wait_for(name, {pb.ENVIRONMENT_STATUS_RUNNING})
        print(f"{name} is running, etag {env.etag}")

        # Change one variable of one service; the rest of the spec stays as it is.
        change = pb.EnvironmentSpecification(
            stack="toolbox", services={"toolbox": pb.ContainerConfiguration(env={"GREETING": "hello"})}
        )
        reply = await client.update(name, change, update_mask=["services.toolbox.env.GREETING"], etag=env.etag)
        print("plan:", ", ".join(f"{c.service} {pb.ChangeAction.Name(c.action)}" for c in reply.plan))
        async with asyncio.timeout(120):
            env = await client.wait_for(name, {pb.ENVIRONMENT_STATUS_RUNNING}, generation=reply.environment.generation)
        print(f"generation {env.observed_generation} runs with GREETING={env.services[0].config.env['GREETING']}")

        # The etag read at creation is stale now: the daemon says so, machine-readably.
        try:
            await client.delete(name, etag=created.etag)
        except ApiError as err:
            print(f"stale etag refused: {err.code} {err.reason}")

        # Everything that happened to it since the start, replayed from the event log.
        async with asyncio.timeout(30):
            async for event in client.events(name, since=start):
                print(f"event {event.sequence}: {pb.EventType.Name(event.type)}")
                if event.type == pb.EVENT_TYPE_ENVIRONMENT_RUNNING and event.generation == env.generation:
                    break

        env = await client.get(name)
        await client.delete(name, etag=env.etag)
        async with asyncio.timeout(120):
            await client.wait_deleted(name)
        print(f"{name} deleted")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--name", default="py-demo")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.address, arguments.name))
