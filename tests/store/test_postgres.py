"""What only the PostgreSQL store does: group commit of step records, LISTEN/NOTIFY wake-ups
across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from perdure.blobs import LocalBlobStore
from perdure.store.postgres import PostgresStore

from ..conftest import ROOT
from .test_contract import _claim_one, _entry, _new_run


async def test_concurrent_step_records_share_a_commit(tmp_path: Path, postgres_url: str) -> None:
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    leases = []
    for _ in range(20):
        await store.create_run(_new_run())
        leases.append(await _claim_one(store))
    await asyncio.gather(
        *(store.append(run_id, lease, entries=[_entry(1)], attempts=[]) for run_id, lease in leases)
    )
    assert store.grouped_appends == 20
    assert store.append_groups < 20  # several runs' records per transaction
    for run_id, _lease in leases:
        assert [e.seq for e in await store.load_journal(run_id)] == [1]
    await store.close()


async def test_a_trigger_from_another_process_wakes_a_waiter(
    tmp_path: Path, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url, blobs=LocalBlobStore(tmp_path), inline_limit=1024)
    await store.open()
    await store.wait_for_change(0.2)  # starts the LISTEN connection
    await asyncio.sleep(0.3)  # and lets its first (catch-all) wake-up pass
    script = (
        "import asyncio, time\n"
        "from perdure.blobs import LocalBlobStore\n"
        "from perdure.store.postgres import PostgresStore\n"
        "from tests.store.test_contract import _new_run\n"
        "async def main():\n"
        f"    s = PostgresStore({postgres_url!r}, blobs=LocalBlobStore('b'), inline_limit=1024)\n"
        "    before = time.time()\n"
        "    await s.create_run(_new_run())\n"
        "    print(before, flush=True)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=subprocess.PIPE
    )
    changed = await store.wait_for_change(30.0, topics=["claimable"])
    noticed = time.time()
    stdout, _ = await proc.communicate()
    triggered = float(stdout.decode().split()[0])
    assert changed
    assert triggered <= noticed < triggered + 1.0  # woken by that commit: pushed, not polled
    await store.close()
