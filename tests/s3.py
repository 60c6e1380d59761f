"""An S3-compatible server on loopback for the object-storage tests, and the app pointed at it.

The server is moto's server mode (a dev extra): a real HTTP server in a thread of the test
process that speaks the S3 API, with buckets in memory. The app reaches it only over HTTP,
through django-storages and boto3, as it would reach AWS S3 or MinIO; nothing is patched.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

from tests.support import require

SETTINGS_FILE = Path(__file__).resolve().parent.parent / "banana_site" / "settings.py"
# Any keys will do for moto; the app's processes would get theirs from the environment.
KEYS = {"access_key": "banana-test-key", "secret_key": "banana-test-secret"}
REGION = "us-east-1"


@contextmanager
def server_running() -> Iterator[str]:
    """Run the server for the length of a `with` block; yields its endpoint URL."""
    require(
        all(importlib.util.find_spec(name) for name in ("moto", "flask", "flask_cors")),
        "moto's server mode is not installed (pip install -e '.[dev]' brings moto[server])",
    )
    from moto.server import ThreadedMotoServer

    # One line per request in a test's output says nothing a failing assertion does not.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def settings_from_env(env: Mapping[str, str]) -> ModuleType:
    """banana_site/settings.py run afresh with these variables (and no other storage ones),
    as a new process with that environment would run it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_"))}
    spec = importlib.util.spec_from_file_location("settings_under_test", SETTINGS_FILE)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        spec.loader.exec_module(module)
    return module


@dataclass
class Bucket:
    name: str
    endpoint_url: str
    origin: str
    client: Any  # a boto3 S3 client of the test's own, to look at the bucket from outside

    def object_keys(self) -> set[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return {item["Key"] for item in listing.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


def use_new_bucket(endpoint_url: str, settings) -> Bucket:
    """Make a bucket and point the app's media at it with pytest-django's `settings`: the
    storage and the CSP exactly as the settings file makes them from the documented
    variables, plus the test's keys."""
    import boto3

    name = f"banana-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=KEYS["access_key"],
        aws_secret_access_key=KEYS["secret_key"],
    )
    client.create_bucket(Bucket=name)
    configured = settings_from_env(
        {
            "AWS_STORAGE_BUCKET_NAME": name,
            "AWS_S3_ENDPOINT_URL": endpoint_url,
            "AWS_S3_REGION_NAME": REGION,
        }
    )
    storage = configured.STORAGES["default"]
    options = {**storage["OPTIONS"], **KEYS}
    settings.STORAGES = {**settings.STORAGES, "default": {**storage, "OPTIONS": options}}
    settings.CONTENT_SECURITY_POLICY = configured.CONTENT_SECURITY_POLICY
    return Bucket(name, endpoint_url, configured.MEDIA_ORIGIN, client)
