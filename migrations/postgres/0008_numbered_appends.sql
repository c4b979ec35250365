-- Group commit (creates written in batches) numbers its own rows: the batch's
-- transaction calls `keyledger_reserve_positions()` first, which takes the
-- numbering lock (the sequencer's, see 0006) until commit and returns the
-- highest position given so far; the batch inserts its rows with the positions
-- after it. Holding the lock through the commit is what 0006 moved away from
-- for single commands, but a batch's one commit serves all its creates, and
-- the rows never need the sequencer's UPDATE (a second version of every row).
-- Positions stay dense and a visible position still implies every lower one is
-- visible: every giver of positions holds the same lock until its commit.
CREATE FUNCTION keyledger_reserve_positions() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    base BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(7305425);
    SELECT COALESCE(MAX(global_position), 0) INTO base FROM events;
    -- Delivered at commit, as the sequencer's.
    PERFORM pg_notify('keyledger_events', '');
    RETURN base;
END;
$$;
