-- As 0008's `keyledger_reserve_positions()`, told how many positions the batch
-- takes, so that its notification can carry the last of them. A node that
-- appended the batch applies it from memory (group commit); with the position
-- in hand its listener sees that there is nothing to read, instead of starting
-- a catch-up (three queries) after every batch of its own. The 0008 function
-- stays for nodes of the previous release during a rolling upgrade; their
-- empty payload, like the sequencer's, still means "read the feed".
CREATE FUNCTION keyledger_reserve_positions(count BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    base BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(7305425);
    SELECT COALESCE(MAX(global_position), 0) INTO base FROM events;
    -- Delivered at commit, as the sequencer's.
    PERFORM pg_notify('keyledger_events', (base + count)::text);
    RETURN base;
END;
$$;
