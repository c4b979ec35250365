-- Leaked keys. The key list shows when a key was first reported leaked
-- (`KeyLeakReported`), so the console and the API can mark it.
ALTER TABLE key_list ADD COLUMN leaked_at BIGINT;
