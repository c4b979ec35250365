-- An Idempotency-Key claim records its request's answer (raw key sealed) and
-- what proves the command was committed (`proof`, JSON) before the command is
-- written: a request that dies or loses its commit's answer after the commit
-- leaves an answer a retry can return instead of issuing a second key.
ALTER TABLE idempotency_keys ADD COLUMN proof TEXT;
