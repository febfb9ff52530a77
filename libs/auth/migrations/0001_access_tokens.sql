-- Access tokens and API keys (libs/auth): who a bearer token speaks for, in which role.
--
-- The token itself is never stored: only its keyed hash, HMAC-SHA256 under a pepper derived from
-- the settings' secret key (libs/auth/tokens.py), so a copy of this table does not let anyone
-- authenticate, and changing CLOSELOOP_SECRET_KEY invalidates every token at once. Every request
-- looks its token up here (no cache), so a revocation or an expiry takes effect on the next request.
CREATE TABLE access_tokens (
    token_id    text        PRIMARY KEY,
    token_hash  text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('token', 'api_key')),
    actor       text        NOT NULL CHECK (actor ~ '^[A-Za-z0-9_.:@-]{1,128}$'),
    role        text        NOT NULL CHECK (role IN ('customer', 'merchant', 'service', 'platform', 'importer',
                                                     'reconciler', 'approver', 'auditor')),
    note        text        NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  text        NOT NULL CHECK (length(created_by) BETWEEN 1 AND 128),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    revoked_by  text,
    CONSTRAINT access_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT access_tokens_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at),
    CONSTRAINT access_tokens_revocation_named CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX access_tokens_actor_idx ON access_tokens (actor, created_at DESC);
