-- Provenance and tamper evidence in the audit log: where the command came from,
-- and the chain hash of each event as it was when the projection applied it.
ALTER TABLE audit_log ADD COLUMN client_addr TEXT;
ALTER TABLE audit_log ADD COLUMN user_agent TEXT;
ALTER TABLE audit_log ADD COLUMN event_hash TEXT;
