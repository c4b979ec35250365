-- Event store of postgres-es (its 7 columns, which it INSERTs by name) plus a
-- global position that equals commit order.
--
-- A sequence alone is not enough: values are taken at INSERT, not at COMMIT, so
-- transaction A may take 41, B take 42 and commit first; a reader that moved its
-- checkpoint to 42 would never see 41. The BEFORE INSERT trigger therefore takes a
-- transaction-scoped advisory lock before drawing the position: appends are
-- serialised until commit, so a visible position p implies every position below p
-- is committed (or rolled back for good). The per-key primary key still gives
-- optimistic concurrency (23505 -> conflict in postgres-es).
CREATE TABLE events (
    aggregate_type  TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    sequence        BIGINT      NOT NULL CHECK (sequence >= 0),
    event_type      TEXT        NOT NULL,
    event_version   TEXT        NOT NULL,
    payload         JSON        NOT NULL,
    metadata        JSON        NOT NULL,
    global_position BIGINT      NOT NULL UNIQUE,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE SEQUENCE events_global_position_seq AS BIGINT;

CREATE FUNCTION events_assign_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- 7305425 is keyledger's lock id for "appending to events".
    PERFORM pg_advisory_xact_lock(7305425);
    NEW.global_position := nextval('events_global_position_seq');
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_assign_position BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_assign_position();

-- Wakes the tailers of every node; delivered at commit, once per transaction.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyledger_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Append-only in the database itself.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Required by postgres-es's schema; keyledger never snapshots (cqrs-es 0.5
-- snapshots apply events twice).
CREATE TABLE snapshots (
    aggregate_type   TEXT   NOT NULL,
    aggregate_id     TEXT   NOT NULL,
    last_sequence    BIGINT NOT NULL CHECK (last_sequence >= 0),
    current_snapshot BIGINT NOT NULL CHECK (current_snapshot >= 0),
    payload          JSON   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
