-- Projection tables. Times are epoch milliseconds; JSON is stored as text.
CREATE TABLE projection_checkpoints (
    name     TEXT    PRIMARY KEY,
    position BIGINT NOT NULL
);

INSERT INTO projection_checkpoints (name, position) VALUES ('key_list', 0), ('audit_log', 0);

CREATE TABLE key_list (
    id               TEXT    PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    key_hash         TEXT    NOT NULL,
    prefix           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    description      TEXT,
    environment      TEXT    NOT NULL,
    permissions      TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    created_at       BIGINT NOT NULL,
    created_by       TEXT    NOT NULL,
    updated_at       BIGINT NOT NULL,
    expires_at       BIGINT,
    last_used_at     BIGINT,
    usage_count      BIGINT NOT NULL DEFAULT 0,
    metadata         TEXT,
    created_position BIGINT NOT NULL
);

CREATE INDEX key_list_by_tenant ON key_list (tenant, created_position);
CREATE INDEX key_list_by_prefix ON key_list (tenant, prefix);

CREATE TABLE audit_log (
    position    BIGINT PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    sequence    BIGINT NOT NULL,
    event_type  TEXT    NOT NULL,
    occurred_at BIGINT NOT NULL,
    actor       TEXT,
    request_id  TEXT,
    data        TEXT    NOT NULL
);

CREATE INDEX audit_log_by_tenant ON audit_log (tenant, position);
CREATE INDEX audit_log_by_key ON audit_log (key_id, position);
