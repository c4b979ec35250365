-- Expiry notices find the keys whose expiry is near by `expires_at`.
CREATE INDEX key_list_by_expiry ON key_list (expires_at, id);
