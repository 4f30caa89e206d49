"""Multipart uploads streamed straight to a temporary file on the storage volume.

The size limit is enforced while the body streams in (413 as soon as it is exceeded, or up front from
Content-Length); the file is hashed on the way. The rest of the form is bounded too: the number of parts and
each other part's size (413), each part's headers (the parser's bound) and the boundary's length (400). The
caller owns the temporary file and must delete it (`Upload.discard`) unless it moves it into storage.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header
from starlette.exceptions import HTTPException

from app.errors import ApiError

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16


def form_allowance(max_fields: int, max_field_bytes: int) -> int:
    """Bytes an upload form may hold besides the file: every part's headers and data at their bounds."""
    return max_fields * 2 * max_field_bytes


@dataclass
class Upload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the upload exceeds the limit of {limit} bytes", code="payload_too_large", param="file")


async def receive_upload(request: Request, *, tmp_dir: Path, max_bytes: int, file_field: str = "file",
                         max_fields: int = MAX_FIELDS, max_field_bytes: int = MAX_FIELD_BYTES) -> Upload:
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "send the file as multipart/form-data with a 'file' field",
                       code="unsupported_media_type", param=file_field)
    if len(params[b"boundary"]) > MAX_BOUNDARY_LENGTH:  # the parser would raise building itself: a 500
        raise ApiError(400, f"the multipart boundary is longer than {MAX_BOUNDARY_LENGTH} characters",
                       code="malformed_upload", param=file_field)
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and (
            int(declared) > max_bytes + form_allowance(max_fields, max_field_bytes)):
        raise too_large(max_bytes)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    upload = Upload()
    state: dict[str, object] = {"name": None, "is_file": False, "header_field": b"", "header_value": b""}
    headers: dict[bytes, bytes] = {}
    buffer = bytearray()
    digest = hashlib.sha256()
    handle = None
    files_seen = 0
    parts = 0

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > max_fields:
            raise ApiError(413, f"the form has more than {max_fields} parts", code="payload_too_large")
        headers.clear()
        buffer.clear()

    # A part's headers are bounded by the parser itself (python_multipart: 400 "Maximum header size exceeded").
    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] = state["header_field"] + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header_value"] = state["header_value"] + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        headers[bytes(state["header_field"]).lower()] = bytes(state["header_value"])  # type: ignore[arg-type]
        state["header_field"] = b""
        state["header_value"] = b""

    def on_headers_finished() -> None:
        nonlocal handle, files_seen
        _disp, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        state["is_file"] = b"filename" in options and name == file_field
        if state["is_file"]:
            files_seen += 1
            if files_seen > 1:
                raise ApiError(422, f"send exactly one '{file_field}' part", param=file_field)
            upload.filename = options[b"filename"].decode("utf-8", "replace")
            fd, tmp_name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
            upload.path = Path(tmp_name)
            handle = os.fdopen(fd, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["is_file"]:
            upload.size += len(chunk)
            if upload.size > max_bytes:
                raise too_large(max_bytes)
            digest.update(chunk)
            assert handle is not None
            handle.write(chunk)
        else:
            buffer.extend(chunk)
            if len(buffer) > max_field_bytes:
                raise ApiError(413, f"form field {str(state['name'])[:100]!r} exceeds {max_field_bytes} bytes",
                               code="payload_too_large", param=str(state["name"])[:100])

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            upload.fields[str(state["name"])] = buffer.decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={  # type: ignore[arg-type]
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    complete = False
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
                if handle is not None:
                    handle.flush()  # each chunk reaches the file: its mtime shows the start-up sweep it is live
        parser.finalize()
        complete = True
    except (ApiError, HTTPException):  # ours, or the body bound's 413 (app.body_limit)
        raise
    except Exception as exc:  # malformed multipart body
        raise ApiError(400, f"malformed multipart body: {exc}", code="malformed_upload", param=file_field) from exc
    finally:  # also when the task is cancelled (a client gone, a shutdown past its timeout): no .part left
        if handle is not None:
            handle.close()
        if not complete:
            upload.discard()
    if upload.path is None:
        raise ApiError(422, f"the form has no '{file_field}' file part", code="missing_parameter", param=file_field)
    upload.sha256 = digest.hexdigest()
    return upload


def multipart_openapi(description: str) -> dict[str, object]:
    """OpenAPI for routes that parse their multipart body themselves (to stream it)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": description},
                            "name": {"type": "string", "description": "Display name (default: the file name)."},
                        },
                    }
                }
            },
        }
    }
