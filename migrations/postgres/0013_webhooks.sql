-- Webhook endpoints and their deliveries. An endpoint's settings live in its
-- event stream (aggregate type WebhookEndpoint); this table names the
-- endpoints of each tenant and holds each one's delivery progress: the feed
-- position delivered through, and the lease of the node delivering it.
CREATE TABLE webhook_endpoints (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    delivered_through BIGINT NOT NULL,
    lease_node    TEXT,
    lease_until   BIGINT NOT NULL DEFAULT 0,
    failing_since BIGINT,
    next_attempt  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant, id);

-- Every message an endpoint was sent or is to be sent, by feed position.
CREATE TABLE webhook_deliveries (
    endpoint_id     TEXT NOT NULL,
    position        BIGINT NOT NULL,
    msg_id          TEXT NOT NULL,
    type            TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_attempt_at BIGINT,
    next_attempt_at BIGINT,
    response_status INTEGER,
    PRIMARY KEY (endpoint_id, position)
);
