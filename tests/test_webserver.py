"""End to end through the real Dagster UI server, started the way ``make ui`` starts it.

``make ui`` runs ``dagster dev`` with a DAGSTER_HOME whose dagster.yaml only disables
telemetry, so Dagster's default run coordinator applies: the QueuedRunCoordinator, which puts
launched runs in a queue that only the dagster-daemon drains. ``dagster-webserver`` alone
would leave a run launched from the UI QUEUED forever; ``dagster dev`` starts the daemon
beside the webserver. This test starts ``dagster dev`` with the same dagster.yaml, launches
``catalogue_concepts`` through GraphQL as the UI's "Materialize" button does, and checks that
the run succeeds and the asset really materialises.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

VENV_BIN = Path(sys.executable).parent
LOCATION = "gen4gen"
JOB = "catalogue_concepts"
ALL_ASSETS = {"concept_images", "segmented_foregrounds", "layouts", "composed_images", "recoloured_images",
              "captions", "mycanvas", "evaluation_report", "personalised_models", "generated_images"}
START_TIMEOUT = 90
RUN_TIMEOUT = 120

pytestmark = pytest.mark.skipif(not (VENV_BIN / "dagster").exists(),
                                reason=f"dagster CLI not found beside {sys.executable}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-8000:]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]


def _stop(process: subprocess.Popen) -> None:
    """Stop the whole process group (dagster dev, its webserver, daemon and code servers)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:  # children may outlive the leader; make sure none is left
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture
def dagster_ui(small_project):
    tmp_path, data_dir, config_file = small_project
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The same instance configuration `make setup` writes for `make ui`.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "GEN4GEN_CONFIG": str(config_file),
           "HF_HUB_OFFLINE": "1", "DAGSTER_DISABLE_TELEMETRY": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("GEN4GEN_DATA_DIR", None)
    log = tmp_path / "dagster_dev.log"
    command = [str(VENV_BIN / "dagster"), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster dev exited with {process.returncode}:\n{server.output()}")
            try:
                with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not answer /server_info in {START_TIMEOUT}s:\n{server.output()}")
            time.sleep(0.5)
        yield server, data_dir
    finally:
        _stop(process)


REPOSITORIES = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes { name location { name } jobs { name } }
    }
    ... on PythonError { message stack }
  }
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
  }
}
"""

ASSET_NODES = "query { assetNodes { assetKey { path } jobNames } }"

LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on PythonError { message }
  }
}
"""

RUN_LOGS = """
query($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { error { message stack } }
        ... on RunFailureEvent { pipelineName }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSET = """
query {
  assetOrError(assetKey: {path: ["concept_images"]}) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId timestamp } }
  }
}
"""


def _run_logs(server: Server, run_id: str) -> str:
    try:
        result = server.graphql(RUN_LOGS, {"runId": run_id})["logsForRun"]
    except Exception as error:  # the report is best effort; the failure itself is the point
        return f"(could not fetch the event log: {error})"
    lines = []
    for event in result.get("events", []):
        line = f"{event.get('level', '')} {event.get('stepKey') or ''} {event['__typename']}: {event.get('message', '')}"
        if event.get("error"):
            line += f"\n{event['error']['message']}{event['error']['stack'] and ''.join(event['error']['stack'])}"
        lines.append(line)
    return "\n".join(lines) or json.dumps(result)


def test_ui_launches_catalogue_job_and_materialises(dagster_ui):
    server, data_dir = dagster_ui

    data = server.graphql(REPOSITORIES)
    repositories = data["repositoriesOrError"]
    assert repositories["__typename"] == "RepositoryConnection", (repositories, data["workspaceOrError"],
                                                                  server.output())
    repository = next((r for r in repositories["nodes"] if r["location"]["name"] == LOCATION), None)
    assert repository, f"no code location {LOCATION!r}: {repositories['nodes']}"
    assert JOB in {job["name"] for job in repository["jobs"]}

    nodes = server.graphql(ASSET_NODES)["assetNodes"]
    assert {"/".join(node["assetKey"]["path"]) for node in nodes} == ALL_ASSETS

    params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": repository["name"], "jobName": JOB},
              "runConfigData": {}}
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    deadline = time.monotonic() + RUN_TIMEOUT
    status = None
    while time.monotonic() < deadline:
        status = server.graphql(RUN, {"runId": run_id})["runOrError"].get("status")
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            break
        time.sleep(0.5)
    assert status == "SUCCESS", (f"run {run_id} ended {status} (QUEUED means nothing dequeued it: no daemon)\n"
                                 f"{_run_logs(server, run_id)}\n--- server output ---\n{server.output()}")

    registry_file = data_dir / "build" / "concepts.json"
    assert registry_file.is_file(), f"{registry_file} was not written"
    registry = json.loads(registry_file.read_text(encoding="utf-8"))
    assert sorted(c["key"] for c in registry["concepts"]) == ["blue_box", "green_cone", "red_ball"]

    asset = server.graphql(ASSET)["assetOrError"]
    assert asset["__typename"] == "Asset", asset
    assert [m["runId"] for m in asset["assetMaterializations"]] == [run_id]
