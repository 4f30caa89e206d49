"""Fixtures of the deployment tests: an S3-compatible server (moto's server mode on a free loopback port, started
and stopped by the tests); the SQLite database and the tiny teacher are the root conftest's."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.servers import free_port


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server; its URL and a boto3 client. Fake credentials are set for every boto3 client."""
    pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "client": boto3.client("s3", endpoint_url=url, region_name="us-east-1")}
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server: dict[str, Any]) -> str:
    """A new, empty bucket on the moto server."""
    name = f"gkd-{secrets.token_hex(4)}"
    s3_server["client"].create_bucket(Bucket=name)
    return name
