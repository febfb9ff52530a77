"""Real bearer tokens for the tests, minted through libs/auth on the test stack's database and secret.

The end-to-end tests name who acts the way they always did, with X-Actor / X-Role headers (or
PlatformClient's actor= / role=); `ActorAuth`, attached to every test client, sends that identity's
bearer token with the request (and the services check the headers agree with it). A request without
either header reads as the auditor and writes as an anonymous customer; a request that carries its
own Authorization header (the access tests) is sent as it is.
"""

from __future__ import annotations

import uuid

from libs.auth.client import ActorAuth, ActorTokens

TEST_SECRET_KEY = "closeloop-test-secret-" + uuid.uuid4().hex


def actor_tokens(pg_dsn: str, secret_key: str = TEST_SECRET_KEY) -> ActorTokens:
    return ActorTokens(pg_dsn, secret_key, created_by="tests")


def actor_auth(tokens: ActorTokens) -> ActorAuth:
    return ActorAuth(tokens)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
