-- The guard on UPDATE (0006) ran a PL/pgSQL function for every row the
-- sequencer numbers: under load the biggest part of the sequencer's time.
-- The same rule as a WHEN condition is checked by the executor itself, and the
-- refusing function only runs for an UPDATE that is refused.
DROP TRIGGER events_guard_update ON events;
DROP FUNCTION events_guard_update();

-- The only change ever allowed to a stored event: giving a pending row its
-- position, once. (`json` has no equality; its text is the stored text.)
CREATE TRIGGER events_guard_update BEFORE UPDATE ON events
    FOR EACH ROW
    WHEN (OLD.global_position IS NOT NULL
          OR NEW.global_position IS NULL
          OR NEW.aggregate_type IS DISTINCT FROM OLD.aggregate_type
          OR NEW.aggregate_id IS DISTINCT FROM OLD.aggregate_id
          OR NEW.sequence IS DISTINCT FROM OLD.sequence
          OR NEW.event_type IS DISTINCT FROM OLD.event_type
          OR NEW.event_version IS DISTINCT FROM OLD.event_version
          OR NEW.payload::text IS DISTINCT FROM OLD.payload::text
          OR NEW.metadata::text IS DISTINCT FROM OLD.metadata::text
          OR NEW.recorded_at IS DISTINCT FROM OLD.recorded_at
          OR NEW.append_seq IS DISTINCT FROM OLD.append_seq)
    EXECUTE FUNCTION events_refuse_change();
