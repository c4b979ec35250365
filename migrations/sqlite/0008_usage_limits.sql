-- Usage limits. The key list shows each key's owner, rate limits and credit
-- ledger (JSON, as its newest ledger event left it).
ALTER TABLE key_list ADD COLUMN owner TEXT;
ALTER TABLE key_list ADD COLUMN ratelimits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE key_list ADD COLUMN credits TEXT;

-- How much of each rate-limit window the nodes have taken between them: a
-- node takes a share in one statement and admits from memory until it is
-- used up. `last_grant` is what the statement that last wrote the row gave.
-- Rows are purged once `expires_ms` (the window's end) is well past.
CREATE TABLE rate_windows (
    subject    TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    win        INTEGER NOT NULL,
    taken      INTEGER NOT NULL,
    last_grant INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (subject, name, win)
);

CREATE INDEX rate_windows_by_expiry ON rate_windows (expires_ms);
