"""Human approval with a timeout: a refund over a threshold waits for a person's decision,
holding no worker slot while it waits; without a decision in time it is declined.

Run it as a demo of its own (a fresh embedded store in a temporary folder):

    python examples/approval_flow.py

or against your store, with a worker, completing the token from the CLI:

    perdure worker examples.approval_flow:app
    perdure trigger examples.approval_flow:app refund '[42, 250.0]'
    perdure tokens list --status waiting
    perdure tokens complete TOKEN_ID --data '{"approved": true, "by": "ana"}'
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

import perdure
from perdure.errors import WaitTimeout
from perdure.wait_records import TokenStatus

if __name__ == "__main__":  # the demo: its own store in a temporary folder
    _HOME = tempfile.mkdtemp(prefix="perdure-approvals-")
    os.environ.setdefault("PERDURE_DATABASE_URL", f"sqlite:///{_HOME}/perdure.db")
    os.environ.setdefault("PERDURE_BLOB_URL", f"file://{_HOME}/blobs")

app = perdure.App("approvals")
AUTO_APPROVE_UP_TO = 100.0
DECISION_TIMEOUT = float(os.environ.get("APPROVAL_TIMEOUT", 86_400))


@app.step
async def notify_reviewer(order: int, amount: float, token_id: str) -> None:
    # an email or a chat message with a link; here, a line on the console
    print(f"  order {order}: refund of {amount:.2f} needs approval -> token {token_id}")


@app.step
async def pay_refund(order: int, amount: float) -> str:
    return f"refund-{order}"  # the payment API call, once (its result is recorded)


@app.task
async def refund(order: int, amount: float) -> dict[str, Any]:
    if amount <= AUTO_APPROVE_UP_TO:
        return {"order": order, "refund": await pay_refund(order, amount), "by": "policy"}
    token = await perdure.create_token(timeout=DECISION_TIMEOUT, tags=["refund"])
    await notify_reviewer(order, amount, token.id)
    try:
        decision = await perdure.wait_for_token(token)  # suspended: no slot, no memory
    except WaitTimeout:
        return {"order": order, "declined": "no decision in time"}
    if not decision.get("approved"):
        return {"order": order, "declined": decision.get("reason", "declined")}
    return {"order": order, "refund": await pay_refund(order, amount), "by": decision["by"]}


async def main() -> None:
    global DECISION_TIMEOUT
    DECISION_TIMEOUT = 2.0  # the demo does not wait a day for the second reviewer
    worker = app.worker(concurrency=2)
    running = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        small = await refund.trigger(1, 20.0)
        big = await refund.trigger(2, 250.0)
        forgotten = await refund.trigger(3, 900.0)
        print("order 1:", await small.result(timeout=30))
        waiting: list[Any] = []
        while len(waiting) < 2:  # both big refunds are waiting for a person
            await asyncio.sleep(0.05)
            waiting = await app.admin.tokens(app=app.name, status=TokenStatus.WAITING)
        token = next(t for t in waiting if t.run_id == big.id)
        print(f"  a reviewer approves order 2 (token {token.id})")
        await app.complete_token(token.id, {"approved": True, "by": "ana"})
        print("order 2:", await big.result(timeout=30))
        print("order 3:", await forgotten.result(timeout=30))
    finally:
        worker.stop()
        await running
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())
