"""Promise 9: a storage write error while a checkpoint is saved. The job fails cleanly (status `failed` with
the error, gapless events, no checkpoint row, no half-written file), and a checkpoint archive is only ever
visible complete: it is written to a temporary name, fsynced and renamed
(`app.store.storage.archive.pack_directory`), so a failure part-way leaves any earlier checkpoint intact.

The fault is real, not injected: a plain file sits where the job's `checkpoints/` directory must be created
(on a full disk the same OSError path is taken with ENOSPC, which the second test injects in-process).
"""

from __future__ import annotations

import errno
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.storage.archive import pack_directory
from gkd.checksums import sha256_file
from tests.reliability.conftest import Stack, report
from tests.support.servers import wait_for
from tests.support.service import all_events, job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_checkpoint_write_error_fails_job_cleanly(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    job = submit(api, headers, teacher, dataset, epochs=30)
    job_dir = stack.settings.storage / "jobs" / job["id"]
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "checkpoints").write_bytes(b"not a directory")  # the final checkpoint cannot be written

    done = wait_for(lambda: (j := job_of(api, headers, job["id"]))["status"] in ("succeeded", "failed") and j,
                    120, "the job to end", interval=0.2, tail=stack.tail)
    assert done["status"] == "failed", done
    assert "FileExistsError" in done["error"] or "NotADirectoryError" in done["error"], done["error"]
    assert done["attempts"] == 1
    assert api.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"] == []
    events = all_events(api, headers, job["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "failed"]
    assert not [e for e in events if e["type"] == "checkpoint"]
    assert not [p for p in job_dir.rglob("*.tmp")]
    report(f"promise 9: checkpoint directory unwritable -> job failed on attempt 1 ({done['error'][:60]}...), "
           f"no checkpoint row, no temp file, {len(events)} gapless events")


def test_failed_checkpoint_write_leaves_previous_archive_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                tiny_teacher: Path) -> None:
    target = tmp_path / "checkpoints" / "final.tar.gz"
    pack_directory(tiny_teacher, target)
    good = sha256_file(target)

    real_add = tarfile.TarFile.add
    calls = {"n": 0}

    def failing_add(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # one member written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", failing_add)
    with pytest.raises(OSError) as info:
        pack_directory(tiny_teacher, target)
    assert info.value.errno == errno.ENOSPC
    assert sha256_file(target) == good
    assert sorted(p.name for p in target.parent.iterdir()) == ["final.tar.gz"]
    with tarfile.open(target) as archive:
        assert "model.safetensors" in archive.getnames()
