"""A Cloud Storage emulator (fake-gcs-server, built by ``python -m pipelines.artifacts``) on a free loopback port,
with google-cloud-storage and Beam's ``gs://`` filesystem pointed at it through this process's environment
(which subprocesses inherit).

Beam's filesystem asks Google's default credentials first and retries for about 30 s when there are
none, so the emulator comes with a credentials file holding a fixed access token that never expires
(the emulator checks none): no request leaves the machine. fake-gcs-server checks ``ifGenerationMatch``
on uploads, not on deletes, and answers the batch calls Beam's file sinks finalize with (copy, delete
many) with nothing; the project's commits use neither.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.request

from pipelines import artifacts
from pipelines.kafka_broker import free_port

BUCKET = "rtml-test"
_TOKEN = {"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
          "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}


class FakeGcs:
    """``with FakeGcs() as root:`` gives ``gs://rtml-test``, an empty bucket, until the block ends."""

    def __enter__(self) -> str:
        binary = artifacts.require(artifacts.fake_gcs_server_binary(), "fake-gcs-server")
        self._home = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        url = f"http://127.0.0.1:{free_port()}"
        self._process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1], "-backend",
             "memory", "-log-level", "error", "-external-url", url], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        credentials = pathlib.Path(self._home.name, "credentials.json")
        credentials.write_text(json.dumps(_TOKEN))
        settings = {"STORAGE_EMULATOR_HOST": url, "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
                    "GOOGLE_CLOUD_PROJECT": "rtml-test"}
        self._saved = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                                 data=json.dumps({"name": BUCKET}).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.1)
        return f"gs://{BUCKET}"

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.wait(10)
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._home.cleanup()
