"""The examples run, end to end, as users run them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import ROOT


def test_demo_kills_the_worker_and_the_run_resumes() -> None:
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killed with SIGKILL" in done.stdout
    assert "the run resumed after its last recorded step" in done.stdout
    assert "plan, search, read 0, read 1, read 2" in done.stdout


def _example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_approval_flow_waits_for_a_person_and_declines_without_one() -> None:
    out = _example("approval_flow.py")
    assert "order 1: {'order': 1, 'refund': 'refund-1', 'by': 'policy'}" in out
    assert "order 2: {'order': 2, 'refund': 'refund-2', 'by': 'ana'}" in out
    assert "order 3: {'order': 3, 'declined': 'no decision in time'}" in out


def test_chat_agent_answers_each_turn_in_order() -> None:
    out = _example("chat_agent.py")
    turns = [line.strip() for line in out.splitlines() if line.strip()]
    assert turns == [
        "user: hello",
        "agent: You said 'hello', ana (turn 1)",
        "user: and in French?",
        "agent: Bien sûr, ana ! (turn 2)",
    ]


def test_daily_report_runs_on_its_schedule() -> None:
    out = _example("daily_report.py")
    assert "schedule demo: * * * * * * (UTC)" in out
    reports = [line for line in out.splitlines() if line.startswith("report for ")]
    assert len(reports) == 3
    assert all(line.endswith(": 42 orders, 3 refunds") for line in reports)
    assert re.search(r"next weekday report: (Mon|Tues|Wednes|Thurs|Fri)day \S+ 09:00 in Paris", out)


def test_deploy_with_patch_keeps_old_runs_on_their_path() -> None:
    out = _example("deploy_with_patch.py")
    assert "the code calls step send_receipt, the journal recorded sleep sleep" in out
    assert "replay check with the patch: 1 of 1 replay" in out
    assert "order 1: charged 1, shipped 1" in out  # started before the patch
    assert "order 2: charged 2, receipt 2, shipped 2" in out


def test_alert_on_failure_posts_once_after_the_last_retry() -> None:
    out = _example("alert_on_failure.py")
    assert "alerts posted: 1" in out  # two attempts, one alert
    assert "invoice run " in out
    assert "failed after 2 attempt(s): " in out
    assert "the payment provider refused acme" in out


@pytest.mark.crash
@pytest.mark.parametrize("name", ["openai_support", "pydantic_support", "langgraph_support"])
def test_an_agent_killed_between_two_model_calls_resumes_without_calling_the_model_again(
    name: str,
) -> None:
    """examples/agents: a worker is SIGKILLed in the lookup tool, after the first model call;
    the second worker replays that call from the journal (it is not made again), runs the
    interrupted lookup again, waits for the approval and answers."""
    done = subprocess.run(
        [sys.executable, "-m", f"examples.agents.{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "worker 1 killed with SIGKILL in the lookup tool" in out
    assert "answer: answer: order 7 shipped; refunded 12.5" in out
    made = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert made[:3] == [
        ["model-call-1", "worker", "1"],
        ["tool-lookup-7", "worker", "1"],
        ["tool-lookup-7", "worker", "2"],
    ]
    assert ["model-call-1", "worker", "2"] not in made
    assert ["model-call-2", "worker", "2"] in made
