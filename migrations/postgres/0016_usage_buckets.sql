-- Usage over time: verifications of each key (subject = its id) and of each
-- tenant (subject = ''), by outcome, in minute, hour and day buckets
-- (start_ms = the bucket's start, epoch milliseconds). Built from the
-- KeyUsageRecorded events from position 0 on, like every projection.
CREATE TABLE usage_buckets (
    tenant                   TEXT    NOT NULL,
    subject                  TEXT    NOT NULL,
    unit                     TEXT    NOT NULL,
    start_ms                 BIGINT NOT NULL,
    valid                    BIGINT NOT NULL,
    disabled                 BIGINT NOT NULL,
    expired                  BIGINT NOT NULL,
    wrong_environment        BIGINT NOT NULL,
    insufficient_permissions BIGINT NOT NULL,
    rate_limited             BIGINT NOT NULL,
    usage_exceeded           BIGINT NOT NULL,
    ip_not_allowed           BIGINT NOT NULL,
    PRIMARY KEY (tenant, subject, unit, start_ms)
);

-- The pruner deletes old buckets of one unit.
CREATE INDEX usage_buckets_by_unit ON usage_buckets (unit, start_ms);

INSERT INTO projection_checkpoints (name, position) VALUES ('usage_buckets', 0);
