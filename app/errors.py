"""The one error envelope: `{"error": {"type", "code", "message", "param"}}` for every 4xx/5xx."""

from __future__ import annotations

import difflib
import logging
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.store.public_paths import public_text
from gkd.text import unstorable_reason

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "rate_limited",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.headers = headers


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"no such {what}: {ident!r}", code="resource_missing", param=param)


def invalid(message: str, param: str | None = None, code: str = "invalid_parameter") -> ApiError:
    return ApiError(422, message, code=code, param=param)


def storable(value: str, param: str) -> str:
    """A form text the database can hold (no NUL, no lone surrogate), else the 422 naming the field."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise invalid(f"{param} {reason}", param=param)
    return value


def conflict(message: str, code: str = "conflict", param: str | None = None) -> ApiError:
    return ApiError(409, message, code=code, param=param)


def error_body(type_: str, code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"type": type_, "code": code, "message": message, "param": param}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.type, exc.code, exc.message, exc.param), status_code=exc.status, headers=exc.headers
    )


def dotted(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'hyperparameters', 'learning_rate') -> 'hyperparameters.learning_rate'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    # Union members show up as loc parts such as 'list[int]' or 'literal[...]'; they are not fields.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(str(p) for p in parts) or None


def public_message(request: Request, message: str) -> str:
    """The message with server paths shown relative to the tenant's ids (`app.store.public_paths`)."""
    settings = getattr(request.app.state, "settings", None)
    return message if settings is None else public_text(message, settings)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    exc.message = public_message(request, exc.message)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404 and exc.detail == "Not Found":
        message = "no such route"
    elif status == 405:
        message = "method not allowed on this route"
    else:
        message = public_message(request, str(exc.detail))
    body = error_body(
        _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        _CODE_BY_STATUS.get(status, "server_error" if status >= 500 else "bad_request"),
        message,
        None,
    )
    return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (`X | None`, `Annotated[X, ...]`, unions of several)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def field_path(models: Iterable[type[BaseModel]], path: Sequence[Any]) -> tuple[list[Any], set[str]]:
    """`path` without pydantic's union-member tags (a model's class name in the location), and the field names
    that can stand at its last part in any of the request body `models`."""
    level, clean = list(models), []
    for index, part in enumerate(path):
        tagged = [model for model in level if model.__name__ == part]
        if tagged:  # 'InitFromModel' in ('student', 'init', 'InitFromModel', 'layer'): which member, not a field
            level = tagged
            continue
        clean.append(part)
        if index < len(path) - 1:
            level = [m for model in level if part in model.model_fields
                     for m in _models_in(model.model_fields[part].annotation)]
    return clean, {name for model in level for name in model.model_fields}


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _meant_member_error(errors: Sequence[Any], extra: Any) -> Any | None:
    """For a key refused as extra by one union member, the error of another member that has that key: the body
    meant that member (`{"checkpoint": ""}` is an empty checkpoint id, not a misspelt InitFromModel field)."""
    loc = tuple(extra.get("loc", ()))
    if len(loc) < 2:
        return None
    at, name = len(loc) - 2, loc[-1]  # loc[at] is the tag of the member that refused `name`
    return next((e for e in errors if e.get("type") != "extra_forbidden" and len(e.get("loc", ())) > at + 1
                 and tuple(e["loc"][:at]) == loc[:at] and e["loc"][at] != loc[at] and e["loc"][at + 1] == name),
                None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # A misspelt field is the most specific diagnosis, also where a union lists other members' errors first,
    # unless another member of the union has that field: then its error says what is wrong.
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0] if errors else
                 {"loc": (), "msg": "invalid request"})
    if first.get("type") == "extra_forbidden":
        first = _meant_member_error(errors, first) or first
    loc = tuple(first.get("loc", ()))
    kind = first.get("type", "")
    models = getattr(request.app.state, "body_models", ())
    siblings: set[str] = set()
    if loc[:1] == ("body",) and len(loc) > 1:  # the fields' path, without union-member tags
        path, fields_there = field_path(models, loc[1:])
        loc = ("body", *path)
        if kind == "extra_forbidden":
            siblings = fields_there
    param = dotted(loc)
    if kind == "json_invalid":
        param = None
        message = "the request body is not valid JSON"
    elif loc == ("body",) and kind in ("dict_type", "model_attributes_type", "model_type"):
        # A JSON body sent without `Content-Type: application/json` arrives as a string.
        message = "the request body must be a JSON object, sent with 'Content-Type: application/json'"
    else:
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if param:
            message = f"{param}: {message}"
        if siblings:
            message += did_you_mean(str(loc[-1]), siblings)
    code = "missing_parameter" if kind == "missing" else "invalid_parameter"
    return JSONResponse(error_body("invalid_request_error", code, message, param), status_code=422)


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    # Starlette re-raises after sending this, and the server then drops the connection: say so, or a
    # keep-alive client sends its next request into a reset socket.
    body = error_body("server_error", "internal_error", "internal server error", None)
    return JSONResponse(body, 500, headers={"Connection": "close"})


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "code", "message", "param"],
            "properties": {
                "type": {"type": "string"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}


def _document_errors(app: FastAPI) -> None:
    """Every operation's 4xx/5xx answers are the envelope: say so in the OpenAPI schema (FastAPI would
    document its own `{"detail": ...}` 422 body, which this app never sends)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        envelope = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses["422"] = {"description": "Invalid request", **envelope}
                responses.setdefault("429", {
                    "description": "Rate limit (per API key), quota or open-stream cap exceeded: `rate_limit_error`",
                    "headers": {"Retry-After": {"description": "Seconds to wait before retrying (rate limits and "
                                                "streams)", "required": False, "schema": {"type": "integer"}}},
                    **envelope,
                })
                responses.setdefault("4XX", {"description": "Client error", **envelope})
                responses.setdefault("5XX", {"description": "Server error", **envelope})
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, body_models: Sequence[type[BaseModel]] = ()) -> None:
    """The envelope for every error; `body_models` (the strict request bodies) feed "did you mean" hints."""
    app.state.body_models = tuple(body_models)
    _document_errors(app)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
