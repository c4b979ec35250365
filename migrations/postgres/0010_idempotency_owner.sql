-- Owned, leased idempotency claims (src/idempotency.rs). `owner` is a random
-- token of the request holding a pending claim: storing its response or giving
-- the claim up only touches the row while it still carries that token, and a
-- takeover writes a new one. `lease_until` (ms since the epoch) is renewed by the
-- running request; only a claim whose lease has lapsed may be taken over. Rows
-- written before this migration have neither and lapse 30 s after `created_at`,
-- as before.
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT;
ALTER TABLE idempotency_keys ADD COLUMN lease_until BIGINT;
