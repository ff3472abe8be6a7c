"""Does a slow reader slow a Ray Serve streaming call's producer? (a probe, not a test)

Why it exists: SECURITY.md ("Buffering between a producer and a slow consumer")
says the Ray hops of the handle path are bounded by the answer's size, not by a
window, because Serve gives its replica calls no generator backpressure. This
probe is the evidence; run it again when Ray is upgraded.

A caller deployment opens a stream of 20,000 items from a producer deployment,
reads one, pauses 3 s, and asks the producer how many it has made by then:

    python scripts/probes/serve_stream_backpressure.py default    # Serve as it is
    python scripts/probes/serve_stream_backpressure.py bp         # + Ray's per-call backpressure
    python scripts/probes/serve_stream_backpressure.py bp_inline  # + the producer's user code inline

Seen with Ray 2.60 (window 16): default 20000, bp 20000 (Serve pumps the
generator into an unbounded queue of its own), bp_inline 17. `bp` patches
Serve's private replica wrapper in the caller, which is why the stack does not.
Starts a local Ray instance of its own (2 CPUs) and shuts it down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import ray
from ray import serve

MODE = sys.argv[1] if len(sys.argv) > 1 else "default"
WINDOW = int(os.environ.get("WINDOW", "16"))
TOTAL = 20_000


def pass_backpressure(window: int) -> None:
    """Make every streaming replica call of this process pass Ray's per-call backpressure (private API)."""
    from ray.serve._private.request_router import replica_wrapper

    original = replica_wrapper.ActorReplicaWrapper.__init__

    class Handle:
        def __init__(self, handle: object) -> None:
            self._handle = handle

        def __getattr__(self, name: str) -> object:
            method = getattr(self._handle, name)
            if name not in ("handle_request_streaming", "handle_request_with_rejection"):
                return method

            class Method:
                def options(self, **kw: object) -> object:
                    return method.options(_generator_backpressure_num_objects=window, **kw)

            return Method()

    def init(self: object, actor_handle: object) -> None:
        original(self, Handle(actor_handle))

    replica_wrapper.ActorReplicaWrapper.__init__ = init


INLINE = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"} if MODE == "bp_inline" else {}


@serve.deployment(ray_actor_options={"runtime_env": {"env_vars": INLINE}, "num_cpus": 0})
class Producer:
    def __init__(self) -> None:
        self.made = 0

    async def stream(self, total: int):  # type: ignore[no-untyped-def]
        for i in range(total):
            self.made += 1
            yield i
            if i % 100 == 0:
                await asyncio.sleep(0)

    def count(self) -> int:
        return self.made


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Caller:
    def __init__(self, producer: object) -> None:
        if MODE != "default":
            pass_backpressure(WINDOW)
        self.producer = producer

    async def __call__(self) -> dict[str, int]:
        gen = self.producer.options(stream=True).stream.remote(TOTAL)  # type: ignore[attr-defined]
        await gen.__anext__()
        await asyncio.sleep(3)
        made = await self.producer.count.remote()  # type: ignore[attr-defined]
        got = 1
        async for _ in gen:
            got += 1
        return {"made_while_paused": made, "read": got}


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"WINDOW": str(WINDOW)}})
    try:
        handle = serve.run(Caller.bind(Producer.bind()), name="probe", route_prefix=None)
        start = time.monotonic()
        result = handle.remote().result()
        print(f"{MODE} window={WINDOW}: {result}, {time.monotonic() - start:.1f} s")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
