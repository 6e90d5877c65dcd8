"""deploy/ holds what it says: Kubernetes manifests valid for the API (kubernetes-validate,
strict), a compose file valid for the Compose Specification (its JSON schema, vendored in
tests/data), a Dockerfile that runs without privileges and checks its health, every command in
them a perdure command with an app that imports; and a worker's health endpoints, served by a
real worker process: /livez, /readyz (not before it reached its store), /drain (it drains and
exits)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

import perdure

from . import hookapp
from .conftest import ROOT, WorkerProcess, wait_until
from .served import free_port

DEPLOY = ROOT / "deploy"
KUBERNETES = "1.30.0"  # the oldest Kubernetes release the manifests are checked against
COMMANDS = {"worker", "server", "migrate"}


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found.append((path.name, doc))
    return found


def _by_kind(kind: str, component: str) -> dict[str, Any]:
    (doc,) = [
        d
        for _name, d in _manifests()
        if d["kind"] == kind and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return doc


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.utils.latest_version()])
def test_the_kubernetes_manifests_are_valid(version: str) -> None:
    kinds = set()
    for name, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {exc.message}") from None
        kinds.add(doc["kind"])
    assert kinds >= {"Deployment", "Service", "Secret", "Job", "HorizontalPodAutoscaler"}


def test_a_worker_pod_drains_before_it_is_stopped_and_reports_its_health() -> None:
    pod = _by_kind("Deployment", "worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    drain = float(env["PERDURE_DRAIN_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] > drain  # a drain is never cut short
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--health-port={ports['health']}" in container["args"]
    assert "--health-host=0.0.0.0" in container["args"]
    assert container["lifecycle"]["preStop"]["httpGet"] == {"path": "/drain", "port": "health"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    secrets = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert {"database-url", "encryption-key"} <= secrets
    assert pod["securityContext"]["runAsNonRoot"] is True
    hpa = _by_kind("HorizontalPodAutoscaler", "worker")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == _by_kind("Deployment", "worker")["metadata"]["name"]
    )
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert metric == "perdure_queue_queued"  # a metric perdure exports
    assert metric in (ROOT / "perdure" / "metrics.py").read_text()


def test_a_hybrid_worker_pod_has_no_database_credentials() -> None:
    """The hybrid worker reaches the server with a key from a Secret and no database URL, and
    drains like the direct worker."""
    pod = _by_kind("Deployment", "worker-hybrid")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert "PERDURE_DATABASE_URL" not in env
    assert env["PERDURE_SERVER_URL"]["value"].startswith("https://")
    assert env["PERDURE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "perdure-hybrid"
    secrets = {d["metadata"]["name"]: d for _name, d in _manifests() if d["kind"] == "Secret"}
    assert "worker-api-key" in secrets["perdure-hybrid"]["stringData"]
    assert container["lifecycle"]["preStop"]["httpGet"]["path"] == "/drain"
    assert pod["terminationGracePeriodSeconds"] > int(env["PERDURE_DRAIN_TIMEOUT"]["value"])


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/")  # an S3-compatible store
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["server"]["ports"] == ["8080:8080"]
    for name in ("migrate", "server", "worker"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"


def _final_stage() -> dict[str, str]:
    """The Dockerfile's last stage (the image that runs): instruction -> value."""
    structure = DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure
    start = max(i for i, s in enumerate(structure) if s["instruction"] == "FROM")
    return {s["instruction"]: s["value"] for s in structure[start:]}


def test_the_dockerfile_runs_without_privileges_and_checks_its_health() -> None:
    stage = _final_stage()
    assert stage["USER"].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in stage
    assert json.loads(stage["ENTRYPOINT"]) == ["perdure"]
    command = json.loads(stage["CMD"])
    assert command[0] == "worker"
    assert "--health-port" in command


def _perdure_commands() -> list[list[str]]:
    """Every perdure command deploy/ runs (the arguments after the entrypoint)."""
    commands = [json.loads(_final_stage()["CMD"])]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        if service.get("build") and "command" in service:  # (the others are not perdure's)
            commands.append(service["command"])
    for _name, doc in _manifests():
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        commands += [c["args"] for c in template.get("containers", [])]
    return commands


def test_every_command_in_deploy_is_a_perdure_command_with_an_app_that_imports() -> None:
    commands = _perdure_commands()
    assert {c[0] for c in commands} == COMMANDS
    for command in commands:
        if command[0] in ("worker", "server"):
            module, _, attr = command[1].partition(":")
            check = f"import perdure, {module} as m; assert isinstance(m.{attr}, perdure.App)"
            done = subprocess.run(
                [sys.executable, "-c", check],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        options = [arg.split("=")[0] for arg in command if arg.startswith("--")]
        helped = subprocess.run(
            [sys.executable, "-m", "perdure", command[0], "--help"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert helped.returncode == 0, helped.stderr
        for option in options:
            assert option in helped.stdout, f"perdure {command[0]} has no option {option}"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(url: str, code: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, text = _get(url)
            if status == code:
                return text
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer {code} within {timeout}s")
        time.sleep(0.05)


def _health_worker(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> tuple[WorkerProcess, str]:
    """A worker of tests/hookapp.py serving its health endpoints; it and their base URL."""
    port = free_port()
    env = {
        "PERDURE_DATABASE_URL": database_url,
        "PERDURE_BLOB_URL": f"file://{tmp_path}/blobs",
        "HOOKS_LOG": str(tmp_path / "hooks.log"),
        "HOOKS_GATE": str(tmp_path / "gate"),
    }
    worker = WorkerProcess(
        "tests.hookapp:app", env, log=tmp_path / "w.log", args=("--health-port", str(port))
    )
    worker_processes.append(worker)
    return worker, f"http://127.0.0.1:{port}"


async def test_a_worker_serves_its_health_and_drains_on_request(
    database_url: str, tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    """/drain answers once the run in flight has finished (not released), then the worker
    exits 0."""
    gate = tmp_path / "gate"
    gate.touch()
    worker, base = _health_worker(database_url, tmp_path, worker_processes)
    _until(base + "/readyz", 200)
    assert _get(base + "/livez") == (200, "ok\n")
    assert _get(base + "/nothing")[0] == 404
    app = perdure.App("hooked", database=database_url, blobs=f"file://{tmp_path}/blobs")
    app.task(name="gated")(hookapp.gated.fn)
    run = await app.get_task("gated").trigger()
    hooks_log = tmp_path / "hooks.log"
    await wait_until(lambda: hooks_log.exists() and "step 2" in hooks_log.read_text(), 60)
    drain = asyncio.create_task(asyncio.to_thread(_get, base + "/drain"))
    await asyncio.to_thread(_until, base + "/readyz", 503)  # draining
    assert not drain.done()  # the run in flight holds the drain
    gate.unlink()
    assert await drain == (200, "drained\n")
    assert await run.result(timeout=30) == 3  # finished by the draining worker, not released
    assert worker.proc.wait(30) == 0
    await app.close()


def test_a_worker_that_cannot_reach_its_store_is_alive_but_not_ready(
    tmp_path: Path, worker_processes: list[WorkerProcess]
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    _worker, base = _health_worker(url, tmp_path, worker_processes)
    _until(base + "/livez", 200)
    assert _get(base + "/readyz") == (503, "not registered with the store yet\n")
