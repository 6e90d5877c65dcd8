"""A deploy under runs in flight, made safe by a patch.

Version 1 of `checkout` charges, waits for the warehouse, and ships. Version 2 also sends a
receipt after the charge. A run that version 1 started and that sleeps through the deploy was
recorded without the receipt: `perdure.patched("send-receipt")` is False for it (it ships
without a receipt, as it would have), and True for every run started after. The replay check
proves it before the deploy — and shows what the same change without the patch would break.

    perdure replay-check examples.deploy_with_patch:app     # in CI, before the deploy
    perdure worker examples.deploy_with_patch:app           # version 2

Run it as a demo of its own (a fresh embedded store):

    python examples/deploy_with_patch.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import perdure

if __name__ == "__main__":  # the demo: its own store in a temporary folder
    _HOME = tempfile.mkdtemp(prefix="perdure-deploy-")
    os.environ.setdefault("PERDURE_DATABASE_URL", f"sqlite:///{_HOME}/perdure.db")
    os.environ.setdefault("PERDURE_BLOB_URL", f"file://{_HOME}/blobs")

WAREHOUSE_WAIT = 1.0  # seconds (a day, in production)


def build(code: str) -> perdure.App:
    """The app as version 1 ("v1"), version 2 with the patch ("v2"), or version 2 without it
    ("v2-unpatched"). One version name across the deploy: the patch keeps old runs replayable,
    so the new workers may resume them."""
    app = perdure.App("shop", version="shop-1")

    @app.step(name="charge")
    async def charge(order: int) -> str:
        return f"charged {order}"

    @app.step(name="send_receipt")
    async def send_receipt(order: int) -> str:
        return f"receipt {order}"

    @app.step(name="ship")
    async def ship(order: int) -> str:
        return f"shipped {order}"

    @app.task(name="checkout")
    async def checkout(order: int) -> list[str]:
        done = [await charge(order)]
        if code == "v2-unpatched" or (code == "v2" and perdure.patched("send-receipt")):
            done.append(await send_receipt(order))
        await perdure.sleep(WAREHOUSE_WAIT)  # the warehouse answers
        done.append(await ship(order))
        return done

    return app


app = build("v2")


async def main() -> None:
    old_code = build("v1")
    old_worker = old_code.worker(concurrency=5)
    running = asyncio.create_task(old_worker.run(install_signal_handlers=False))
    order_1 = await old_code.get_task("checkout").trigger(1)
    while await order_1.status() is not perdure.RunStatus.WAITING:  # noqa: ASYNC110 - polled
        await asyncio.sleep(0.05)
    print("order 1 started on version 1 and waits for the warehouse")
    old_worker.stop()  # the deploy: version 1's worker drains and stops
    await running
    await old_code.close()

    unpatched = build("v2-unpatched")
    for verdict in await unpatched.admin.check_replays():
        print(
            f"replay check without the patch: run {verdict.run_id} fails at position "
            f"{verdict.seq}: the code calls {verdict.called}, the journal recorded "
            f"{verdict.recorded}"
        )
    await unpatched.close()
    verdicts = await app.admin.check_replays()
    print(f"replay check with the patch: {sum(v.ok for v in verdicts)} of {len(verdicts)} replay")

    new_worker = app.worker(concurrency=5)
    running = asyncio.create_task(new_worker.run(install_signal_handlers=False))
    order_2 = await app.get_task("checkout").trigger(2)
    resumed = await app.handle(order_1.id)
    print(f"order 1: {', '.join(await resumed.result(timeout=30))}")
    print(f"order 2: {', '.join(await order_2.result(timeout=30))}")
    new_worker.stop()
    await running
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
