"""Client pieces that need no server: import weight, error mapping and retries (httpx.MockTransport),
the SSE decoder, the archive checks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import httpx
import pytest

from gkd import client as gc
from gkd.client._archive import pack_directory, safe_extract
from gkd.client.sse import SSEDecoder

REPO = Path(__file__).resolve().parents[2]


def test_import_does_not_load_torch_transformers_or_pandas() -> None:
    code = ("import sys, gkd.client, gkd.client.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _envelope(status: int, type_: str, code: str = "x", param: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "code": code, "message": f"m{status}",
                                                  "param": param}})


@pytest.mark.parametrize(("status", "cls"), [
    (400, gc.InvalidRequestError), (401, gc.AuthenticationError), (403, gc.PermissionDeniedError),
    (404, gc.NotFoundError), (409, gc.ConflictError), (413, gc.PayloadTooLargeError),
    (415, gc.InvalidRequestError), (422, gc.InvalidRequestError), (429, gc.RateLimitError),
    (500, gc.ServerError), (503, gc.ServerError),
])
def test_error_classes_from_envelope(status: int, cls: type[gc.GkdError]) -> None:
    transport = httpx.MockTransport(lambda request: _envelope(status, "some_type", "some_code", "a.b"))
    with gc.Client("http://gkd.test", "k", max_retries=0, transport=transport) as client, \
            pytest.raises(cls) as info:
        client.datasets.get("ds_1")
    err = info.value
    assert (err.status_code, err.type, err.code, err.message, err.param) == (
        status, "some_type", "some_code", f"m{status}", "a.b")


def test_non_envelope_error_body() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="bad gateway"))
    with gc.Client("http://gkd.test", "k", max_retries=0, transport=transport) as client, \
            pytest.raises(gc.ServerError, match="bad gateway"):
        client.jobs.get("job_1")


class Flaky:
    """Answers `failures` times with `status` (or a connection error), then 200."""

    def __init__(self, failures: int, status: int | None) -> None:
        self.failures, self.status, self.calls = failures, status, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if len(self.calls) <= self.failures:
            if self.status is None:
                raise httpx.ConnectError("refused", request=request)
            return _envelope(self.status, "server_error", param=None)
        if request.url.path == "/v1/jobs":
            return httpx.Response(201, json={"id": "job_1", "status": "queued"})
        return httpx.Response(200, json={"id": "ds_1", "object": "dataset", "new_field": 7})


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gkd.client._http.backoff", lambda attempt, retry_after=None: 0.0)
    monkeypatch.setattr("gkd.client._sync.backoff", lambda attempt, retry_after=None: 0.0)


@pytest.mark.parametrize("status", [429, 500, 503, None])
def test_get_is_retried(status: int | None) -> None:
    flaky = Flaky(2, status)
    with gc.Client("http://gkd.test", "k", max_retries=3, transport=httpx.MockTransport(flaky)) as client:
        dataset = client.datasets.get("ds_1")
    assert len(flaky.calls) == 3
    assert dataset.id == "ds_1" and dataset.model_dump()["new_field"] == 7  # unknown fields are kept


def test_retries_are_bounded() -> None:
    flaky = Flaky(10, 503)
    with gc.Client("http://gkd.test", "k", max_retries=2, transport=httpx.MockTransport(flaky)) as client, \
            pytest.raises(gc.ServerError):
        client.datasets.get("ds_1")
    assert len(flaky.calls) == 3


def test_post_with_idempotency_key_is_retried_with_the_same_key() -> None:
    flaky = Flaky(2, 503)
    with gc.Client("http://gkd.test", "k", max_retries=3, transport=httpx.MockTransport(flaky)) as client:
        job = client.jobs.create(teacher="mdl_1", training_dataset="ds_1")
    assert job.id == "job_1" and len(flaky.calls) == 3
    keys = {r.headers["idempotency-key"] for r in flaky.calls}
    assert len(keys) == 1 and len(keys.pop()) == 36  # one uuid4 for all attempts
    assert json.loads(flaky.calls[0].content) == {"teacher": "mdl_1", "training_dataset": "ds_1",
                                                  "method": "gradient_kd"}


def test_unsafe_post_is_not_retried_after_a_response(tmp_path: Path) -> None:
    flaky = Flaky(1, 503)
    with gc.Client("http://gkd.test", "k", max_retries=3, transport=httpx.MockTransport(flaky)) as client, \
            pytest.raises(gc.ServerError):
        client.jobs.cancel("job_1")
    assert len(flaky.calls) == 1
    # ...but a connection that could not be opened sent nothing: retried, the upload body is sent again.
    flaky = Flaky(1, None)
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n")
    with gc.Client("http://gkd.test", "k", max_retries=3, transport=httpx.MockTransport(flaky)) as client:
        client.datasets.upload(data)
    assert len(flaky.calls) == 2 and b"a,x" in flaky.calls[1].read()


def test_connection_error_after_retries() -> None:
    with gc.Client("http://127.0.0.1:9", "k", max_retries=1, timeout=2) as client, \
            pytest.raises(gc.APIConnectionError):
        client.models.get("mdl_1")


def test_key_and_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GKD_BASE_URL", "http://example.test:1234/")
    monkeypatch.setenv("GKD_API_KEY", "gkd_env")
    seen = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={"status": "ok"}))
    with gc.Client(transport=transport) as client:
        assert client.base_url == "http://example.test:1234" and client.health() == {"status": "ok"}
    assert seen[0].headers["authorization"] == "Bearer gkd_env"
    monkeypatch.delenv("GKD_BASE_URL")
    assert gc.Client(api_key="x").base_url == gc.DEFAULT_BASE_URL


def test_the_old_names_still_work_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GKD_BASE_URL", raising=False)
    monkeypatch.delenv("GKD_API_KEY", raising=False)
    monkeypatch.setenv("GKD_URL", "http://old.test:1/")
    monkeypatch.setenv("GKD_KEY", "gkd_old")
    seen = []
    transport = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200, json={"status": "ok"}))
    with pytest.warns(FutureWarning, match="GKD_URL is deprecated: set GKD_BASE_URL"), \
            pytest.warns(FutureWarning, match="GKD_KEY is deprecated: set GKD_API_KEY"), \
            gc.Client(transport=transport) as client:
        assert client.base_url == "http://old.test:1" and client.health() == {"status": "ok"}
    assert seen[0].headers["authorization"] == "Bearer gkd_old"
    monkeypatch.setenv("GKD_API_KEY", "gkd_new")  # the current name wins, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert gc.Client(base_url="http://x.test").api_key == "gkd_new"


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = ["retry: 2000", "", ": keep-alive", "", "id: 4", "event: metrics", 'data: {"a":', "data: 1}", "",
             "data: x", ""]
    events = [e for e in (decoder.decode(line) for line in lines) if e is not None]
    assert [(e.id, e.event, e.data) for e in events] == [("4", "metrics", '{"a":\n1}'), ("4", "message", "x")]
    assert decoder.retry == 2000


def _tar_with(tmp_path: Path, add: callable) -> Path:  # type: ignore[valid-type]
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_safe_extract_refuses(tmp_path: Path, kind: str) -> None:
    def add(archive: tarfile.TarFile) -> None:
        archive.addfile(*_file("config.json"))
        if kind == "dotdot":
            archive.addfile(*_file("../outside.txt"))
        elif kind == "absolute":
            archive.addfile(*_file("/tmp/outside.txt"))
        else:
            info = tarfile.TarInfo("link")
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[kind]
            info.linkname = "/etc/passwd"
            archive.addfile(info)

    dest = tmp_path / "dest"
    with pytest.raises(gc.UnsafeArchiveError):
        safe_extract(_tar_with(tmp_path, add), dest)
    assert not any(dest.iterdir())  # checked before anything is written
    assert not (tmp_path / "outside.txt").exists()


def test_pack_and_extract_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "a.txt").write_text("a")
    packed = pack_directory(src)
    try:
        out = safe_extract(packed, tmp_path / "out")
    finally:
        packed.unlink()
    assert (out / "config.json").read_text() == "{}" and (out / "sub" / "a.txt").read_text() == "a"


def test_download_bar_counts_bytes_and_starts_over_when_a_download_is_retried() -> None:
    from gkd.client.cli import download_bar

    out = io.StringIO()
    with download_bar("best ckpt_x", None, file=out) as progress:
        for received in (0, 600, 1200, 0, 900, 2048):  # broken after 1,200 bytes, then retried to the end
            progress(received, 2048)
            time.sleep(0.12)  # tqdm redraws at most every 0.1 s
    text = out.getvalue()
    assert "best ckpt_x" in text and "100%" in text and "2.00k/2.00k" in text
    assert "1.17k/2.00k" in text and "900/2.00k" in text  # the retry counts from 0 again, not from 1,200


def test_the_key_comes_from_the_argument_the_environment_or_a_local_servers_key_file(tmp_path, monkeypatch) -> None:
    from gkd.client._http import resolve_api_key

    (tmp_path / "local_api_key").write_text("gkd_local\n", encoding="utf-8")
    monkeypatch.setenv("GKD_HOME", str(tmp_path))
    monkeypatch.delenv("GKD_API_KEY", raising=False)
    assert resolve_api_key(None, "http://127.0.0.1:8000") == "gkd_local"
    assert resolve_api_key(None, "http://localhost:9000") == "gkd_local"
    # A key read from this machine's disk is never sent to another host.
    assert resolve_api_key(None, "https://gkd.example.com") is None
    monkeypatch.setenv("GKD_API_KEY", "gkd_env")
    assert resolve_api_key(None, "http://127.0.0.1:8000") == "gkd_env"
    assert resolve_api_key("gkd_arg", "http://127.0.0.1:8000") == "gkd_arg"
    client = gc.Client("http://127.0.0.1:1", None)
    assert client._http.headers["Authorization"] == "Bearer gkd_env"  # noqa: SLF001
    client.close()


def test_watch_bar_names_a_phase_with_one_colon_also_without_a_total() -> None:
    """`gkd jobs watch` showed `queued: : 0step` while a job waited (tqdm's set_description adds its own ': ')."""
    import io

    from tqdm import tqdm

    from gkd.client.cli import _set_bar

    out = io.StringIO()
    bar = tqdm(total=None, unit="step", desc="waiting", file=out)
    _set_bar(bar, "queued", 0, None, "step")
    _set_bar(bar, "teacher cache (train)", 3, 10, "batches")
    bar.close()
    assert "queued: 0step" in out.getvalue() and "queued: :" not in out.getvalue()
    assert "teacher cache (train):  30%" in out.getvalue()
