-- Keys imported from another system (POST /v1/keys/import), by the SHA-256
-- of the foreign key (64 lowercase hex). Before an import creates a key it
-- claims the key's hash here: the first claim wins (the primary key decides
-- between nodes importing at once), and every later import of the same hash
-- reads the winner, so importing a hash again gives the same key id and a
-- hash belongs to one tenant only. `claimed_at` is when (epoch ms).
CREATE TABLE import_claims (
    key_hash   TEXT    PRIMARY KEY NOT NULL,
    tenant     TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    claimed_at INTEGER NOT NULL
) STRICT;
