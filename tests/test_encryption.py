"""Encryption at rest: values and blobs unreadable without the key, clear errors with a missing
or wrong key, and rotation to a new key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure.blobs import open_blobs
from perdure.crypto import Keyring, new_key, parse_key
from perdure.errors import ConfigurationError, EncryptionError
from perdure.rotation import rotate

from .conftest import ROOT, running_worker, stored_bytes

MARK = "plaintext-marker-7f3a"


def stored_everywhere(app: perdure.App, blob_root: Path) -> bytes:
    blobs = b"".join(p.read_bytes() for p in blob_root.rglob("*") if p.is_file())
    return stored_bytes(app) + blobs


def encrypted_app(make_app: Callable[..., perdure.App]) -> perdure.App:
    app = make_app(inline_limit=1024)

    @app.step(name="echo")
    async def echo(text: str) -> str:
        return text

    @app.task(name="carry")
    async def carry(small: str, big: str) -> list[str]:
        return [await echo(small), await echo(big)]

    @app.task(name="listen")
    async def listen() -> list[Any]:
        """Waits whose values (a match, a token's data, an event's payload, a message) must be
        encrypted too."""
        perdure.metadata.set("mark", MARK)  # metadata and stream chunks too
        await perdure.stream("s", MARK)
        token = await perdure.wait_for_token("t")
        event = await perdure.wait_for_event("e", match={"mark": MARK})
        message = await perdure.receive("m")
        return [token, event, message]

    return app


async def run_carry(app: perdure.App) -> list[str]:
    async with running_worker(app):
        handle = await app.get_task("carry").trigger(MARK, MARK * 400)
        result: list[str] = await handle.result(timeout=30)
        listening = await app.get_task("listen").trigger()
        await listening.complete_token("t", MARK)
        await listening.send("m", MARK * 400)  # (over the inline limit: a blob)
        await app.send_event("e", {"mark": MARK})
        assert await listening.result(timeout=30) == [MARK, {"mark": MARK}, MARK * 400]
        outside = await app.create_token()  # a token of no run, and an event nobody awaits
        await app.complete_token(outside, MARK)
        await app.send_event("unheard", MARK)
    return result


async def test_nothing_is_stored_in_the_clear(
    make_app: Callable[..., perdure.App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", new_key())
    app = encrypted_app(make_app)
    assert await run_carry(app) == [MARK, MARK * 400]
    await app.store.open()
    everything = stored_everywhere(app, tmp_path / "blobs")
    await app.close()
    assert MARK.encode() not in everything
    assert any((tmp_path / "blobs").rglob("*"))  # the big value did go to the blob folder


async def test_a_missing_or_wrong_key_is_a_clear_error(
    make_app: Callable[..., perdure.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", new_key())
    app = encrypted_app(make_app)
    await run_carry(app)
    (run,) = await app.store.list_runs(task="carry")
    await app.close()

    monkeypatch.delenv("PERDURE_ENCRYPTION_KEY")
    keyless = make_app()
    with pytest.raises(EncryptionError, match="no key is configured"):
        await keyless.store.get_run(run.id)
    await keyless.close()

    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", new_key())
    wrong = make_app()
    with pytest.raises(EncryptionError, match="not configured"):
        await wrong.store.get_run(run.id)
    await wrong.close()


async def test_rotation_moves_every_value_to_the_new_key(
    make_app: Callable[..., perdure.App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # some runs written in the clear, some under an old key
    clear = encrypted_app(make_app)
    await run_carry(clear)
    old_key = new_key()
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", old_key)
    under_old = encrypted_app(make_app)
    await run_carry(under_old)

    new = new_key()
    monkeypatch.setenv("PERDURE_ENCRYPTION_KEY", new)
    monkeypatch.setenv("PERDURE_ENCRYPTION_OLD_KEYS", old_key)
    rotating = make_app()
    report = await rotate(rotating.store, rotating.store.blobs)
    assert report.values > 0
    assert report.blobs >= 1
    again = await rotate(rotating.store, rotating.store.blobs)
    assert (again.values, again.blobs) == (0, 0)  # everything is under the new key now
    assert MARK.encode() not in stored_everywhere(rotating, tmp_path / "blobs")
    await rotating.close()

    monkeypatch.delenv("PERDURE_ENCRYPTION_OLD_KEYS")  # the old key is gone: nothing needs it
    after = make_app()
    runs = [run for run in await after.store.list_runs() if run.task == "carry"]
    assert len(runs) == 2
    for run in runs:
        handle = await after.handle(run.id)
        assert await handle.result(timeout=5) == [MARK, MARK * 400]
        assert len(await after.store.load_journal(run.id)) == 2
    await after.close()


async def test_blobs_in_a_bucket_are_encrypted(s3_blob_url: str) -> None:
    keyring = Keyring(os.urandom(32))
    blobs = open_blobs(s3_blob_url, keyring=keyring)
    data = MARK.encode() + os.urandom(4000)  # incompressible: stored raw unless encrypted
    ref = await blobs.put(data)
    assert await blobs.get(ref.key) == data
    plain = open_blobs(s3_blob_url)  # the same bucket without the key
    stored = plain._stored  # type: ignore[attr-defined]  # the object's bytes, as stored
    assert MARK.encode() in await stored((await plain.put(MARK.encode() + os.urandom(99))).key)
    assert MARK.encode() not in await stored(ref.key)
    with pytest.raises(EncryptionError, match="no key is configured"):
        await plain.get(ref.key)
    with pytest.raises(EncryptionError):
        await plain.reencrypt(ref.key)  # writing it in the clear needs the key to read it


def test_keys_parse_and_bad_keys_are_refused() -> None:
    raw = os.urandom(32)
    assert parse_key(base64.b64encode(raw).decode(), source="k") == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("="), source="k") == raw
    assert parse_key(raw.hex(), source="k") == raw
    with pytest.raises(ConfigurationError, match="32-byte key"):
        parse_key("too-short", source="PERDURE_ENCRYPTION_KEY")


def test_the_encryption_commands(tmp_path: Path) -> None:
    key = subprocess.run(
        [sys.executable, "-m", "perdure", "encryption", "new-key"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    assert len(parse_key(key, source="new-key")) == 32
    env = {
        **os.environ,
        "PERDURE_DATABASE_URL": f"sqlite:///{tmp_path}/perdure.db",
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "PERDURE_ENCRYPTION_KEY": key,
    }
    done = subprocess.run(
        [sys.executable, "-m", "perdure", "encryption", "rotate", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"values": 0, "blobs": 0}'
