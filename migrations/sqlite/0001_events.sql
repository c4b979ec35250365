-- Event store of sqlite-es (its 7 columns, which it INSERTs by name) plus a global
-- position. SQLite has a single writer, so the position assigned by the trigger in
-- the writing transaction equals commit order. The composite primary key is what
-- gives optimistic concurrency: a second append of the same sequence fails with
-- SQLITE_CONSTRAINT_PRIMARYKEY (1555), which sqlite-es reports as a conflict.
CREATE TABLE events (
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 0),
    event_type      TEXT    NOT NULL,
    event_version   TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    global_position INTEGER,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_global_position ON events (global_position);

CREATE TRIGGER events_assign_position AFTER INSERT ON events
BEGIN
    UPDATE events
       SET global_position = (SELECT COALESCE(MAX(global_position), 0) + 1 FROM events)
     WHERE rowid = NEW.rowid;
END;

-- Append-only: the only update allowed is the position assignment above.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN OLD.global_position IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

-- Required by sqlite-es's schema; keyledger never snapshots (cqrs-es 0.5 snapshots
-- apply events twice).
CREATE TABLE snapshots (
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
) STRICT;
