"""A Schema Registry with authentication on loopback, for the tests of the confluent-* value formats.

``SchemaRegistry().start()`` runs Apicurio Registry 2.6 (Confluent's REST API under ``/apis/ccompat/v7``: ``.url``) and
a Keycloak beside it that checks the registry's clients: a client sends basic-auth credentials, which Apicurio
exchanges for a Keycloak token (client credentials), as confluent-kafka's ``basic.auth.user.info`` sends them.
``.user_info`` is the one client's ``ID:SECRET``, made at start-up. The registry keeps its schemas in a file
database, so ``stop()`` then ``start()`` is an outage after which every schema id still answers; Keycloak keeps
running; ``close()`` ends both and deletes their files. Both from the distributions ``python -m pipelines.artifacts``
fetched (see there why these two).

Measured here (2 cores, nothing else running): Keycloak ready 14 s after launch, then the registry 4-5 s.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx2

from pipelines import artifacts
from pipelines.kafka_broker import free_port

_REALM = "registry"
# Short-lived test services: the JIT's first tier only. Keycloak's start took 24 s of CPU instead of 34.
_QUICK_START = "-XX:TieredStopAtLevel=1"
_CLIENT = "scorer"


class SchemaRegistry:
    def __init__(self):
        self._root = Path(tempfile.mkdtemp(prefix="rtml-registry-"))
        self._keycloak_port, self._port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self._port}/apis/ccompat/v7"
        self.user_info = f"{_CLIENT}:{uuid.uuid4().hex}"
        self._keycloak: subprocess.Popen | None = None
        self._registry: subprocess.Popen | None = None

    def _process(self, command: list[str], environment: dict, log: str) -> subprocess.Popen:
        with open(self._root / log, "ab") as out:
            return subprocess.Popen(command, env={**os.environ, **environment}, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _start_keycloak(self, timeout: float) -> None:
        home = artifacts.require(artifacts.distribution("keycloak"), "Keycloak")
        admin = uuid.uuid4().hex
        self._keycloak = self._process(
            [str(home / "bin" / "kc.sh"), "start", "--optimized", "--http-enabled", "true", "--hostname-strict",
             "false", "--http-host", "127.0.0.1", "--http-port", str(self._keycloak_port),
             "--http-management-port", str(free_port())],
            {"KC_BOOTSTRAP_ADMIN_USERNAME": "admin", "KC_BOOTSTRAP_ADMIN_PASSWORD": admin,
             "JAVA_HOME": str(Path(artifacts.java()).resolve().parents[1]), "JAVA_OPTS_APPEND": _QUICK_START},
            "keycloak.log")
        base = f"http://127.0.0.1:{self._keycloak_port}"
        token = _waited(lambda: httpx2.post(f"{base}/realms/master/protocol/openid-connect/token", data={
            "grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": admin}),
            timeout, "Keycloak", self._keycloak, self._root / "keycloak.log").json()["access_token"]
        client_id, secret = self.user_info.split(":")
        realm = {"realm": _REALM, "enabled": True, "clients": [
            {"clientId": "registry-api", "bearerOnly": True},
            {"clientId": client_id, "secret": secret, "publicClient": False, "serviceAccountsEnabled": True,
             "standardFlowEnabled": False}]}
        httpx2.post(f"{base}/admin/realms", json=realm, headers={"Authorization": f"Bearer {token}"},
                   timeout=30).raise_for_status()

    def start(self, timeout: float = 90.0) -> "SchemaRegistry":
        """Start Keycloak (once) and the registry, unless it runs; returns once the registry answers an authenticated
        call."""
        if self._registry is not None and self._registry.poll() is None:
            return self
        deadline = time.monotonic() + timeout
        if self._keycloak is None:
            self._start_keycloak(timeout)
        jar = artifacts.require(artifacts.distribution("apicurio") / "apicurio-registry-app-2.6.13.Final-runner.jar",
                                "Apicurio Registry")
        self._registry = self._process([artifacts.java(), "-Xmx256m", _QUICK_START, "-jar", str(jar)], {
            "HTTP_PORT": str(self._port), "QUARKUS_HTTP_HOST": "127.0.0.1",
            "REGISTRY_DATASOURCE_URL": f"jdbc:h2:file:{self._root / 'schemas'}",
            "AUTH_ENABLED": "true", "CLIENT_CREDENTIALS_BASIC_AUTH_ENABLED": "true",
            "KEYCLOAK_URL": f"http://127.0.0.1:{self._keycloak_port}", "KEYCLOAK_REALM": _REALM,
            "KEYCLOAK_API_CLIENT_ID": "registry-api"}, "registry.log")
        _waited(lambda: httpx2.get(f"{self.url}/subjects", auth=tuple(self.user_info.split(":"))),
                deadline - time.monotonic(), "the registry", self._registry, self._root / "registry.log")
        return self

    def stop(self) -> None:
        """End the registry (Keycloak stays): its clients' calls are refused until ``start()``."""
        _ended(self._registry)
        self._registry = None

    def close(self) -> None:
        self.stop()
        _ended(self._keycloak)
        shutil.rmtree(self._root, ignore_errors=True)


def _waited(call, timeout: float, what: str, process: subprocess.Popen, log: Path) -> httpx2.Response:
    """``call()``'s first successful response within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = call()
            if response.is_success:
                return response
            last = f"HTTP {response.status_code}"
        except httpx2.TransportError as error:
            last = repr(error)
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready ({last}; exit code {process.poll()}); its log: {log}")
        time.sleep(0.5)


def _ended(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(20)
