"""The request guard in front of every API: what a request body may be before any route reads it.

For POST, PUT and PATCH (pure ASGI, so it also covers routes that read the raw body, like the webhooks):

- size: at most CLOSELOOP_MAX_JSON_BODY_BYTES (1 MiB) of JSON, CLOSELOOP_MAX_BODY_BYTES (32 MiB) of anything
  else (the CSV imports); more is 413, refused from Content-Length before reading, or as soon as a streamed
  body passes the limit;
- media type: a route that declares its request body in the OpenAPI document takes only those media types;
  another one is 415 naming Content-Type and the types it takes;
- JSON, for a route that declares a JSON body: it must parse (strict RFC 8259: no NaN, no lone surrogates),
  nest at most 32 levels and hold no NUL character in any string or key (PostgreSQL text cannot
  store one); otherwise 422 naming the field (its JSON path) and the rule. A route that reads its raw body
  (a webhook: its signature covers the bytes) checks it itself, with the same rules (`find_bad_json`).

The body is then handed to the app unchanged, byte for byte (a webhook's signature covers those bytes).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.domain.json_input import find_bad_json

MAX_JSON_BODY_BYTES = int(os.environ.get("CLOSELOOP_MAX_JSON_BODY_BYTES", str(1024 * 1024)))
MAX_BODY_BYTES = int(os.environ.get("CLOSELOOP_MAX_BODY_BYTES", str(32 * 1024 * 1024)))
WITH_BODY = ("POST", "PUT", "PATCH")
_MATCH_MEMO = 4096


def _error(status: int, code: str, field: str, rule: str, **details: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": f"{field}: {rule}",
                                   "details": {**details, "fields": [{"field": field, "rule": rule}]}}},
                        status_code=status)


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


class RequestGuard:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._media: dict[tuple[str, str], set[str]] | None = None
        self._matched: dict[tuple[str, str], set[str] | None] = {}

    def _declared(self, scope: Scope) -> set[str] | None:
        """The media types the matched route declares for its body (None: it declares none)."""
        if self._media is None:
            media: dict[tuple[str, str], set[str]] = {}
            for path, operations in self.fastapi_app.openapi().get("paths", {}).items():
                for method, op in operations.items():
                    content = (op.get("requestBody") or {}).get("content") if isinstance(op, dict) else None
                    if content:
                        media[(method.upper(), path)] = {m.lower() for m in content}
            self._media = media
        key = (scope["method"], scope["path"])
        if key in self._matched:
            return self._matched[key]
        found: set[str] | None = None
        for route in self.fastapi_app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                found = self._media.get((scope["method"], getattr(route, "path", "")))
                break
        # Remembered per method and path (matching every route for each request was a cost of its own;
        # paths carry ids, so the memo is bounded).
        if len(self._matched) >= _MATCH_MEMO:
            self._matched.clear()
        self._matched[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = _media_type(headers)
        limit = MAX_JSON_BODY_BYTES if _is_json(media) or not media else MAX_BODY_BYTES
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self._too_large(limit)(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(limit)(scope, receive, send)
                return
        refused = self._check(scope, media, bytes(body))
        if refused is not None:
            await refused(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(limit: int) -> JSONResponse:
        return _error(413, "payload_too_large", "body", f"must be at most {limit} bytes", limit_bytes=limit)

    def _check(self, scope: Scope, media: str, body: bytes) -> JSONResponse | None:
        declared = self._declared(scope)
        if body and declared is not None and media not in declared:
            return _error(415, "unsupported_media_type", "Content-Type",
                          f"must be {' or '.join(sorted(declared))}, not {media or 'missing'}",
                          accepted=sorted(declared))
        if body and declared is not None and _is_json(media):  # (a route reading its raw body checks it itself)
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return _error(422, "validation_error", "body", f"is not valid JSON: {exc}", type="json_invalid")
            bad = find_bad_json(parsed)
            if bad is not None:
                return _error(422, "validation_error", bad[0], bad[1], type="value_error")
        return None


def install_request_guard(app: FastAPI) -> None:
    app.add_middleware(RequestGuard, fastapi_app=app)
