"""The dashboard in a real browser: Debian's chromium driven by Playwright against a real
`perdure server` and worker process, on both stores. Sign in by key, find a failed run, read its
stack trace, replay it and see it complete; complete a token from the tokens page and watch the
waiting run finish live. And what it refuses: no key, a wrong one, a narrow scope, an action
without its CSRF token."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

import perdure
from perdure.records import RunStatus

from .conftest import running_worker, wait_until
from .served import Served

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # (tests run as root)
    "--headless=new",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():  # noqa: ASYNC240
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing: apt-get install -y chromium (scripts/test does)")
        pytest.skip("chromium is missing: apt-get install -y chromium")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Browser, served: Served, scope: str = "admin") -> Page:
    context = await browser.new_context()  # a browser profile of its own: its own cookies
    context.set_default_timeout(30_000)
    page = await context.new_page()
    await page.goto(served.url + "/")
    await expect(page).to_have_url(served.url + "/login?next=%2F")
    await page.fill("input[name=key]", "pdk_0000000000000000_wrong")
    await page.click("button[type=submit]")
    await expect(page.locator("#error")).to_contain_text("opens nothing")
    await page.fill("input[name=key]", served.keys[scope])
    await page.click("button[type=submit]")
    await expect(page).to_have_url(served.url + "/")
    return page


async def test_find_a_failed_run_read_its_trace_replay_it(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    fragile = served.app.get_task("fragile")
    failed = await fragile.trigger(str(fixed))
    await wait_until(lambda: _status_is(served, failed.id, RunStatus.FAILED), timeout=30)

    page = await signed_in(browser, served)
    await expect(page.locator("#count-failed")).to_have_text("1")
    await page.click(f"#failures a[href='/runs/{failed.id}']")
    await expect(page.locator("h1 .status")).to_have_text("failed")
    await expect(page.locator("#run-error")).to_contain_text("broken until")
    await expect(page.locator("#run-error .traceback")).to_contain_text("Traceback")
    await expect(page.locator("#run-error .traceback")).to_contain_text("waitapp.py")
    await expect(page.locator("#logs")).to_contain_text(f"{fixed} is missing")

    fixed.touch()  # the fix is deployed
    await page.click("button:has-text('Replay')")
    await expect(page).not_to_have_url(served.url + f"/runs/{failed.id}")
    replay_id = page.url.rsplit("/", 1)[-1]
    await expect(page.locator("h1 .status")).to_have_text("completed")  # live, no reload
    await expect(page.locator("#result")).to_contain_text("fixed")
    await expect(page.locator("#replay-of")).to_have_text(failed.id)  # linked to the original
    replayed = await served.app.store.get_run(replay_id, values=False)
    assert replayed.task == "fragile"
    assert replayed.status is RunStatus.COMPLETED
    assert replayed.replay_of == failed.id

    await page.goto(served.url + "/runs?status=failed")
    await expect(page.locator("#runs tbody tr")).to_have_count(1)
    await page.goto(served.url + "/runs?task=fragile")
    await expect(page.locator("#runs tbody tr")).to_have_count(2)


async def test_complete_a_token_and_watch_the_run_finish_live(
    browser: Browser, served: Served
) -> None:
    approval = served.app.get_task("approval")
    run = await approval.trigger("dash-1")
    await wait_until(lambda: _status_is(served, run.id, RunStatus.WAITING), timeout=30)

    watcher = await signed_in(browser, served)
    await watcher.goto(served.url + f"/runs/{run.id}")
    await expect(watcher.locator("h1 .status")).to_have_text("waiting")
    await expect(watcher.locator("#waiting-for")).to_contain_text("token")

    operator = await watcher.context.new_page()  # the same session, another tab
    await operator.goto(served.url + "/tokens")
    row = operator.locator("#tokens tbody tr", has_text=run.id)
    await row.locator("input[name=data]").fill('{"approved": true, "by": "ops"}')
    await row.locator("button:has-text('Complete')").click()
    await expect(operator).to_have_url(served.url + f"/runs/{run.id}")

    # the first tab was not reloaded: it follows the run and sees it end
    await expect(watcher.locator("h1 .status")).to_have_text("completed", timeout=30_000)
    await expect(watcher.locator("#result")).to_contain_text('"by": "ops"')
    assert await run.result(timeout=10) == {"approved": True, "by": "ops"}


async def test_actions_are_refused_without_a_key_scope_or_csrf_token(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    fragile = served.app.get_task("fragile")
    failed = await fragile.trigger(str(tmp_path / "never"))
    await wait_until(lambda: _status_is(served, failed.id, RunStatus.FAILED), timeout=30)
    replay = f"/runs/{failed.id}/replay"

    async with httpx.AsyncClient(base_url=served.url) as anonymous:
        assert (await anonymous.get("/runs")).status_code == 303  # to the sign-in page
        assert (await anonymous.post(replay, data={"csrf": "x"})).status_code == 401
    wrong = {"perdure_key": "pdk_0000000000000000_nope"}
    async with httpx.AsyncClient(base_url=served.url, cookies=wrong) as forged:
        assert (await forged.post(replay, data={"csrf": "x"})).status_code == 401

    page = await signed_in(browser, served, scope="admin")
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    token = await page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    async with httpx.AsyncClient(base_url=served.url, cookies=cookies) as admin:
        assert (await admin.post(replay)).status_code == 403  # no token
        assert (await admin.post(replay, data={"csrf": "0" * 64})).status_code == 403
        # a page of another site posts the form: the cookie is SameSite=Strict, and without
        # the token the server refuses it all the same
        assert (await admin.post(replay, data={"csrf": token[:-1]})).status_code == 403
    runs = await served.app.admin.list_runs(task="fragile")
    assert [r.id for r in runs] == [failed.id]  # nothing was triggered

    reader = await signed_in(browser, served, scope="read")
    await reader.goto(served.url + f"/runs/{failed.id}")
    await expect(reader.locator("#run-error")).to_be_visible()
    await expect(reader.locator("button:has-text('Replay')")).to_have_count(0)
    read_cookies = {c["name"]: c["value"] for c in await reader.context.cookies()}
    read_token = await reader.locator("input[name=csrf]").first.get_attribute("value")
    async with httpx.AsyncClient(base_url=served.url, cookies=read_cookies) as narrow:
        refused = await narrow.post(replay, data={"csrf": read_token or ""})
        assert refused.status_code == 403
        assert "does not allow trigger" in refused.text
    assert len(await served.app.admin.list_runs(task="fragile")) == 1

    async with httpx.AsyncClient(base_url=served.url, cookies=cookies) as admin:
        done = await admin.post(replay, data={"csrf": token})  # the real thing goes through
        assert done.status_code == 303
    assert len(await served.app.admin.list_runs(task="fragile")) == 2


async def _status_is(served: Served, run_id: str, status: RunStatus) -> bool:
    return (await served.app.store.get_run(run_id, values=False)).status is status


async def test_a_long_run_shows_its_first_and_last_steps(
    make_app: Callable[..., perdure.App],
) -> None:
    """A run of 300 steps: its page holds the first and last 100 and says how many are left
    out (the page of a run of a million steps stays small)."""
    from perdure.server import create_app

    app = make_app()

    @app.step
    async def tick(i: int) -> int:
        return i

    @app.task
    async def long() -> int:
        return sum([await tick(i) for i in range(300)])

    async with running_worker(app):
        handle = await long.trigger()
        assert await handle.result(timeout=60) == sum(range(300))
        transport = httpx.ASGITransport(app=create_app(app, open_access=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            page = (await client.get(f"/runs/{handle.id}")).text
    assert "100 more steps" in page
    shown = [int(seq) for seq in re.findall(r"<tr><td>(\d+)</td>", page)]
    assert shown == [*range(1, 101), *range(201, 301)]
