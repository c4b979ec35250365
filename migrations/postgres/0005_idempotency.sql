-- Idempotency keys of POST /v1/keys and /rotate: the first response of a request,
-- replayed for retries for 24 hours. The raw key is kept encrypted (XChaCha20-
-- Poly1305, key derived from the server secret) and the row is erased on expiry.
CREATE TABLE idempotency_keys (
    tenant        TEXT    NOT NULL,
    idem_key      TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    response_body TEXT,
    sealed_key    TEXT,
    PRIMARY KEY (tenant, idem_key)
);

CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
