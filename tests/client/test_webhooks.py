"""Webhook endpoints from the Python client (sync and async) and the `gkd webhooks` commands, against a real API
server: create shows the secret once, list/get/deliveries/delete, and the service's refusals as typed errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

import gkd.client as gc
from gkd.cli import main
from tests.support.servers import Server

URL = "http://93.184.215.14/hooks"  # a public address literal: accepted without a lookup, never called here


def test_sync_client(client: gc.Client) -> None:
    created = client.webhooks.create(URL, ["job.succeeded", "job.failed"], description="ci")
    assert isinstance(created, gc.Webhook) and created.secret and created.secret.startswith("whsec_")
    fetched = client.webhooks.get(created.id)
    assert fetched.secret is None and fetched.event_types == ["job.succeeded", "job.failed"]
    assert [w.id for w in client.webhooks.list()] == [created.id]
    assert client.webhooks.deliveries(created.id).to_list() == []
    with pytest.raises(gc.InvalidRequestError) as refused:
        client.webhooks.create("http://127.0.0.1/hooks", ["job.failed"])
    assert refused.value.param == "url"
    with pytest.raises(gc.InvalidRequestError):
        client.webhooks.create(URL, ["job.exploded"])
    assert client.webhooks.delete(created.id).deleted
    with pytest.raises(gc.NotFoundError):
        client.webhooks.get(created.id)


def test_async_client(server: Server, api_key: str) -> None:
    async def flow() -> None:
        async with gc.AsyncClient(server.url, api_key, timeout=20) as client:
            created = await client.webhooks.create(URL, ["checkpoint.created"])
            assert created.secret and created.secret.startswith("whsec_")
            assert [w.id async for w in client.webhooks.list()] == [created.id]
            assert [d async for d in client.webhooks.deliveries(created.id)] == []
            assert (await client.webhooks.get(created.id)).url == URL
            assert (await client.webhooks.delete(created.id)).deleted
            with pytest.raises(gc.NotFoundError):
                await client.webhooks.delete(created.id)

    asyncio.run(flow())


def test_cli(server: Server, api_key: str) -> None:
    runner = CliRunner()
    common = ["--base-url", server.url, "--api-key", api_key]
    created = runner.invoke(main, ["webhooks", "create", URL, "--event", "job.failed", "--event", "job.succeeded",
                                   *common])
    assert created.exit_code == 0, created.output
    webhook_id = created.stdout.strip()
    assert webhook_id.startswith("wh_") and "whsec_" in created.stderr
    listed = runner.invoke(main, ["webhooks", "list", "--json", *common])
    assert [w["id"] for w in json.loads(listed.stdout)["data"]] == [webhook_id]
    got = runner.invoke(main, ["webhooks", "get", webhook_id, "--json", *common])
    assert got.exit_code == 0, got.output
    shown = json.loads(got.stdout)
    assert shown["id"] == webhook_id and shown["event_types"] == ["job.failed", "job.succeeded"]
    assert shown.get("secret") is None  # shown only by create
    missing = runner.invoke(main, ["webhooks", "get", "wh_missing", *common])
    assert missing.exit_code == 1 and "404" in missing.stderr
    log = runner.invoke(main, ["webhooks", "deliveries", webhook_id, "--json", *common])
    assert log.exit_code == 0 and json.loads(log.stdout)["data"] == []
    bad = runner.invoke(main, ["webhooks", "create", "ftp://93.184.215.14/x", "--event", "job.failed", *common])
    assert bad.exit_code == 1 and "http" in bad.stderr
    assert runner.invoke(main, ["webhooks", "delete", webhook_id, *common]).exit_code == 0
    assert json.loads(runner.invoke(main, ["webhooks", "list", "--json", *common]).stdout)["data"] == []
