"""Promise 7, what tests/service/test_models.py and test_datasets.py do not already show: against a real
uvicorn process, an oversized upload is cut while it streams (the server answers 413 long before the body
ends, and its memory does not grow with the body); a declared oversized Content-Length is refused before
any body byte; zip archives with `..`, absolute paths or pickle weights are refused too; nothing of a
refused upload stays on disk or in the database.

Already covered elsewhere: tar `..`/absolute/symlink/hard link/device/pickle and auto_map configs
(test_models.py::test_unsafe_archives_are_refused, ::test_remote_code_configs_and_non_archives_are_refused),
zip symlinks (::test_zip_with_symlink_is_refused), chunked 413 in-process and no leftovers
(test_datasets.py::test_oversized_upload_is_refused_while_streaming).
"""

from __future__ import annotations

import io
import select
import socket
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import report
from tests.support.servers import MAX_DATASET_BYTES
from tests.support.service import new_key

pytestmark = [pytest.mark.slow, pytest.mark.services]

BOUNDARY = "rel0boundary"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def leftovers(home: Path) -> list[Path]:
    storage = home / "storage"
    return [p for p in storage.rglob("*") if p.is_file()] if storage.exists() else []


def response_of(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def test_oversized_stream_is_cut_early_with_bounded_memory(live_server) -> None:  # type: ignore[no-untyped-def]
    key = new_key(live_server.settings)
    pid = live_server.process.pid
    before = rss_kib(pid)
    total = 256 * 1024 * 1024  # what the client would send: 8192 x the limit
    chunk = (b"good movie,positive\n" * 3277)[:65536]
    sock = socket.create_connection(("127.0.0.1", live_server.port))
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n")
    part = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\ntext,label\r\n").encode()
    sock.sendall(head.encode() + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    sent, answered, peak = 0, False, before
    started = time.monotonic()
    while sent < total:
        readable, writable, _ = select.select([sock], [sock], [], 5)
        if readable:
            answered = True
            break
        if not writable:
            break
        try:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:  # reset by the server: it stopped reading
            answered = True
            break
        sent += len(chunk)
        if sent % (4 * 1024 * 1024) == 0:
            peak = max(peak, rss_kib(pid))
    answer = response_of(sock)
    sock.close()
    elapsed = time.monotonic() - started
    peak = max(peak, rss_kib(pid))
    assert answered and sent < 32 * 1024 * 1024, f"server read {sent} bytes before answering"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert peak - before < 64 * 1024, f"API RSS grew by {(peak - before) // 1024} MiB"

    # A declared Content-Length over the limit: refused before a single body byte is sent.
    sock = socket.create_connection(("127.0.0.1", live_server.port))
    sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                  f"Content-Length: {10 * 1024 ** 3}\r\n\r\n").encode())
    declared = response_of(sock)
    sock.close()
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]

    listed = httpx.get(f"{live_server.url}/v1/datasets", headers={"Authorization": f"Bearer {key}"}).json()
    assert listed["data"] == []
    assert leftovers(live_server.settings.home) == []
    report(f"promise 7: limit {MAX_DATASET_BYTES} B; chunked upload cut after {sent // 1024} KiB sent of "
           f"{total // 2**20} MiB (413 in {elapsed:.2f}s), API RSS +{(peak - before) // 1024} MiB; "
           "10 GiB Content-Length -> 413 with no body read; nothing stored")


def zip_with(tiny_teacher: Path, name: str, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(tiny_teacher.iterdir()):
            archive.write(path, arcname=path.name)
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo would normalise `..` and `/` away; the raw name is what attackers send
        archive.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(("member", "words"), [("../escape.txt", "leaves"), ("/etc/evil.txt", "absolute"),
                                               ("sub/../../x.txt", "leaves"), ("pytorch_model.bin", "pickle"),
                                               ("weights.pkl", "pickle")])
def test_unsafe_zip_members_are_refused(live_server, tiny_teacher: Path, member: str,  # type: ignore[no-untyped-def]
                                        words: str) -> None:
    key = new_key(live_server.settings)
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(f"{live_server.url}/v1/models", headers=headers,
                          files={"file": ("teacher.zip", zip_with(tiny_teacher, member))}, timeout=30)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]["message"]
    mine = [m for m in httpx.get(f"{live_server.url}/v1/models", headers=headers).json()["data"]
            if m["owner"] == "tenant"]
    assert mine == [] and leftovers(live_server.settings.home) == []
