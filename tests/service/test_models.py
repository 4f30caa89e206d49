"""Teacher models: listing (own + global), archive uploads and every refusal of unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.registry import import_directory
from app.store.db import session_scope
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher


def tar_of(directory: Path, prefix: str = "", extra: list[tarfile.TarInfo] | None = None,
           payload: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=prefix + path.name)
        for info in extra or []:
            data = (payload or {}).get(info.name, b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def zip_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(directory.iterdir()):
            archive.write(path, arcname=path.name)
    return buffer.getvalue()


def upload(client: TestClient, headers: dict, name: str, body: bytes):
    return client.post("/v1/models", headers=headers, files={"file": (name, body)}, data={"name": "uploaded"})


def models_dir(settings: Settings) -> list[Path]:
    root = settings.storage / "models"
    leftovers = [p for p in settings.tmp_dir.iterdir()] if settings.tmp_dir.exists() else []
    return ([p for p in root.rglob("*") if p.is_file()] if root.exists() else []) + leftovers


def test_list_models_own_and_global(client: TestClient, auth: dict, other_auth: dict, settings: Settings,
                                    tiny_teacher: Path) -> None:
    mine = register_teacher(settings, auth, tiny_teacher, name="mine")
    with session_scope(settings.database_url) as session:
        shared = import_directory(session, tiny_teacher, "shared-tiny-for-test", source="builtin").id
    listed = {m["id"]: m for m in client.get("/v1/models?limit=100", headers=auth).json()["data"]}
    assert mine in listed and shared in listed
    assert listed[mine]["labels"] == ["negative", "positive"] and listed[mine]["num_layers"] == 2
    assert listed[mine]["hidden_size"] == 32 and listed[mine]["num_parameters"] > 0
    assert listed[mine]["task"] == "text-classification" and listed[shared]["owner"] == "global"
    other = {m["id"] for m in client.get("/v1/models?limit=100", headers=other_auth).json()["data"]}
    assert shared in other and mine not in other
    assert_error(client.get(f"/v1/models/{mine}", headers=other_auth), 404, "not_found_error")


@pytest.mark.parametrize("kind", ["tar", "tar-with-folder", "zip"])
def test_upload_archive(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path, kind: str) -> None:
    body = {"tar": lambda: tar_of(tiny_teacher), "tar-with-folder": lambda: tar_of(tiny_teacher, "tiny/"),
            "zip": lambda: zip_of(tiny_teacher)}[kind]()
    name = "teacher.zip" if kind == "zip" else "teacher.tar.gz"
    response = upload(client, auth, name, body)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["id"].startswith("mdl_") and model["name"] == "uploaded"
    assert model["labels"] == ["negative", "positive"]
    assert model["source"] == "upload" and model["owner"] == "tenant"
    assert client.get(f"/v1/models/{model['id']}", headers=auth).json()["id"] == model["id"]


def _link(name: str, target: str, type_: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = target
    return info


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


@pytest.mark.parametrize(
    ("extra", "payload", "words"),
    [
        ([_file("../escape.txt")], {"../escape.txt": b"x"}, "leaves"),
        ([_file("/etc/evil.txt")], {"/etc/evil.txt": b"x"}, "absolute"),
        ([_link("evil", "/etc/passwd", tarfile.SYMTYPE)], None, "link"),
        ([_link("hard", "config.json", tarfile.LNKTYPE)], None, "link"),
        ([_link("dev", "", tarfile.CHRTYPE)], None, "regular"),
        ([_file("pytorch_model.bin")], {"pytorch_model.bin": b"pickle"}, "pickle"),
    ],
)
def test_unsafe_archives_are_refused(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path,
                                     extra: list, payload: dict | None, words: str) -> None:
    response = upload(client, auth, "teacher.tar.gz", tar_of(tiny_teacher, extra=extra, payload=payload))
    error = assert_error(response, 422, "invalid_request_error")
    assert words in error["message"]
    assert models_dir(settings) == []
    assert client.get("/v1/models", headers=auth).json()["data"] == [] or all(
        m["owner"] == "global" for m in client.get("/v1/models", headers=auth).json()["data"]
    )


def test_remote_code_configs_and_non_archives_are_refused(client: TestClient, auth: dict, settings: Settings,
                                                          tiny_teacher: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    for path in tiny_teacher.iterdir():
        (remote / path.name).write_bytes(path.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(config))
    error = assert_error(upload(client, auth, "remote.tar.gz", tar_of(remote)), 422, "invalid_request_error")
    assert "auto_map" in error["message"]
    assert_error(upload(client, auth, "teacher.tar.gz", b"not an archive at all"), 422, "invalid_request_error",
                 "file")
    assert_error(upload(client, auth, "teacher.safetensors", b"x"), 415, "invalid_request_error", "file")
    assert models_dir(settings) == []


def test_zip_with_symlink_is_refused(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> None:
    import stat

    buffer = io.BytesIO(zip_of(tiny_teacher))
    with zipfile.ZipFile(buffer, "a") as archive:
        info = zipfile.ZipInfo("vocab-link.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    error = assert_error(upload(client, auth, "teacher.zip", buffer.getvalue()), 422, "invalid_request_error")
    assert "link" in error["message"]
    assert models_dir(settings) == []


@pytest.mark.parametrize(("family", "facts"), [
    ("distilbert", {"num_layers": 4, "hidden_size": 32, "num_heads": 4, "embedding_size": 32}),
    ("albert", {"num_layers": 4, "hidden_size": 32, "num_heads": 4, "embedding_size": 16}),
])
def test_uploaded_teacher_shows_its_family_facts(client: TestClient, auth: dict, tmp_path: Path, family: str,
                                                 facts: dict) -> None:
    from tests.support.factories import make_tiny_family_teacher

    teacher = make_tiny_family_teacher(tmp_path / family, family)
    response = upload(client, auth, "teacher.tar.gz", tar_of(teacher))
    assert response.status_code == 201, response.text
    model = client.get(f"/v1/models/{response.json()['id']}", headers=auth).json()
    assert model["family"] == model["model_type"] == family
    assert {k: model[k] for k in facts} == facts and model["max_positions"] == 64


def test_upload_of_an_unsupported_family_is_refused(client: TestClient, auth: dict, tmp_path: Path) -> None:
    from tests.support.factories import make_tiny_gpt2

    response = upload(client, auth, "teacher.tar.gz", tar_of(make_tiny_gpt2(tmp_path / "gpt2")))
    assert response.status_code == 422, response.text
    assert "not supported" in response.text and "modernbert" in response.text
