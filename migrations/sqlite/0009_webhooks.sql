-- Webhook endpoints and their deliveries. An endpoint's settings live in its
-- event stream (aggregate type WebhookEndpoint); this table names the
-- endpoints of each tenant and holds each one's delivery progress: the feed
-- position delivered through, and the lease of the node delivering it.
CREATE TABLE webhook_endpoints (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    delivered_through INTEGER NOT NULL,
    lease_node    TEXT,
    lease_until   INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    next_attempt  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant, id);

-- Every message an endpoint was sent or is to be sent, by feed position.
CREATE TABLE webhook_deliveries (
    endpoint_id     TEXT NOT NULL,
    position        INTEGER NOT NULL,
    msg_id          TEXT NOT NULL,
    type            TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_attempt_at INTEGER,
    next_attempt_at INTEGER,
    response_status INTEGER,
    PRIMARY KEY (endpoint_id, position)
);
