-- Usage over time: verifications of each key (subject = its id) and of each
-- tenant (subject = ''), by outcome, in minute, hour and day buckets
-- (start_ms = the bucket's start, epoch milliseconds). Built from the
-- KeyUsageRecorded events from position 0 on, like every projection.
CREATE TABLE usage_buckets (
    tenant                   TEXT    NOT NULL,
    subject                  TEXT    NOT NULL,
    unit                     TEXT    NOT NULL,
    start_ms                 INTEGER NOT NULL,
    valid                    INTEGER NOT NULL,
    disabled                 INTEGER NOT NULL,
    expired                  INTEGER NOT NULL,
    wrong_environment        INTEGER NOT NULL,
    insufficient_permissions INTEGER NOT NULL,
    rate_limited             INTEGER NOT NULL,
    usage_exceeded           INTEGER NOT NULL,
    ip_not_allowed           INTEGER NOT NULL,
    PRIMARY KEY (tenant, subject, unit, start_ms)
) STRICT;

-- The pruner deletes old buckets of one unit.
CREATE INDEX usage_buckets_by_unit ON usage_buckets (unit, start_ms);

INSERT INTO projection_checkpoints (name, position) VALUES ('usage_buckets', 0);
