-- Appends no longer wait for each other; positions are given after commit.
--
-- 0001 took an advisory lock in a BEFORE INSERT trigger and held it until
-- commit, so every append paid a full WAL flush while all other appends waited:
-- one durable command per fsync (about 200/s on this kind of disk), where
-- PostgreSQL's group commit lets concurrent transactions share a flush.
--
-- Now an append commits with no position. The sequencer
-- (`keyledger_sequence_events()`, called by the writer right after its commit
-- and by every node's tailer when it polls) takes the lock, numbers every
-- committed row still without a position in the order the rows were appended,
-- and commits. Only one sequencer runs at a time and it numbers only committed
-- rows, so a visible position p still implies that every position below p is
-- visible: tailers keep reading `global_position > checkpoint` and never skip.
-- Positions stay dense (no gaps from rolled-back appends).
DROP TRIGGER events_assign_position ON events;
DROP FUNCTION events_assign_position();

ALTER TABLE events ALTER COLUMN global_position DROP NOT NULL;

-- Append order, taken at INSERT: numbers rows that commit together in the order
-- they were written. Two events of one key are never pending in the wrong
-- order: event n+1 can only be appended after event n committed.
CREATE SEQUENCE events_append_seq AS BIGINT;
ALTER TABLE events ADD COLUMN append_seq BIGINT;
UPDATE events SET append_seq = global_position WHERE append_seq IS NULL;
SELECT setval('events_append_seq', COALESCE((SELECT MAX(append_seq) FROM events), 0) + 1, false);
ALTER TABLE events ALTER COLUMN append_seq SET DEFAULT nextval('events_append_seq');
ALTER TABLE events ALTER COLUMN append_seq SET NOT NULL;

CREATE INDEX events_pending ON events (append_seq) WHERE global_position IS NULL;

-- The only change ever allowed to a stored event: giving a pending row its
-- position, once. Everything else stays refused.
CREATE FUNCTION events_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.global_position IS NULL AND NEW.global_position IS NOT NULL
       AND NEW.aggregate_type = OLD.aggregate_type
       AND NEW.aggregate_id = OLD.aggregate_id
       AND NEW.sequence = OLD.sequence
       AND NEW.event_type = OLD.event_type
       AND NEW.event_version = OLD.event_version
       AND NEW.payload::text = OLD.payload::text
       AND NEW.metadata::text = OLD.metadata::text
       AND NEW.recorded_at = OLD.recorded_at
       AND NEW.append_seq = OLD.append_seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END;
$$;

DROP TRIGGER events_no_update_delete ON events;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_guard_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_guard_update();

-- Appends wake the sequencers; the sequencer wakes the tailers (0001's trigger
-- on INSERT keeps notifying `keyledger_events`, which also runs the sequencer).
CREATE FUNCTION keyledger_sequence_events() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    base BIGINT;
    numbered BIGINT;
BEGIN
    -- 7305425 is keyledger's lock id for "numbering events"; held until commit.
    PERFORM pg_advisory_xact_lock(7305425);
    -- Each statement below sees every row committed before the lock was granted.
    SELECT COALESCE(MAX(global_position), 0) INTO base FROM events;
    UPDATE events e
       SET global_position = base + p.n
      FROM (SELECT aggregate_type, aggregate_id, sequence,
                   row_number() OVER (ORDER BY append_seq) AS n
              FROM events
             WHERE global_position IS NULL
             ORDER BY append_seq
             LIMIT 10000) p
     WHERE e.aggregate_type = p.aggregate_type
       AND e.aggregate_id = p.aggregate_id
       AND e.sequence = p.sequence;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    IF numbered > 0 THEN
        PERFORM pg_notify('keyledger_events', '');
    END IF;
    RETURN numbered;
END;
$$;

-- Tailers are woken when positions are given, not when rows are appended (an
-- appended row is not in the feed until it has a position).
DROP TRIGGER events_notify ON events;
DROP FUNCTION events_notify();
