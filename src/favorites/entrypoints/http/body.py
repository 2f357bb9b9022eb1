"""Request bodies: JSON only, exactly the documented fields, errors that say what is wrong."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from favorites.domain.errors import MalformedRequest, UnsupportedMediaType, ValidationFailed

Model = TypeVar("Model", bound=BaseModel)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and
                                           media.endswith("+json"))


async def read_json(request: Request, model: type[Model]) -> Model:
    """415 for a non-JSON body, 400 for malformed JSON, 422 for the wrong fields or values."""
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as application/json")
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object")
    _refuse_repeated_names(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(describe(exc)) from None


def _refuse_repeated_names(raw: bytes) -> None:
    """A name given twice in one object is 422. JSON leaves its meaning open (RFC 8259 §4);
    parsers differ on which value wins, so a proxy or a log that reads the first could see
    another request than the one served (``{"user_id": a, ..., "user_id": b}``). orjson keeps
    the last silently, so the body (as small as ``FAVORITES_MAX_BODY_BYTES`` allows, 1 KB by
    default) is read again by the standard parser, which can report every object's names. That
    parser recurses: nesting orjson accepts (up to 1,024 deep) can exceed its limit, which no
    documented body comes near."""
    try:
        json.loads(raw, object_pairs_hook=_unique_names)
    except RecursionError:
        raise ValidationFailed("body: nested too deeply") from None


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValidationFailed(f"body: {', '.join(repeated)} given more than once")
    return dict(pairs)


async def refuse_body(request: Request) -> None:
    """For a request that documents no body: none, or an empty JSON object. Anything else is
    the same 415, 400 or 422 a documented body would get, not silently ignored."""
    length = request.headers.get("content-length")
    if (length is None or length == "0") and "transfer-encoding" not in request.headers:
        return
    raw = await request.body()
    if not raw:
        return
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("this request takes no body; send none, or {} as JSON")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not valid JSON") from None
    if data != {}:
        raise ValidationFailed("this request takes no body; send none, or {}")


def with_schema(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI ``requestBody`` for handlers that read the body themselves (``read_json``)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def describe(exc: ValidationError) -> str:
    """One line per problem, naming the field; never echoes the submitted value back."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "body"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
