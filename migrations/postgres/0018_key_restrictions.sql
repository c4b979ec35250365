-- IP restrictions and imported keys. `allowed_ips` holds the key's
-- allow-list as a JSON array of CIDRs ('[]': any address); `imported` is 1
-- for a key issued by another system and brought in by its hash, which the
-- verification index places by that hash rather than by a display body.
ALTER TABLE key_list ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';
ALTER TABLE key_list ADD COLUMN imported BIGINT NOT NULL DEFAULT 0;
