-- Rotation links in the key list.
ALTER TABLE key_list ADD COLUMN rotated_from TEXT;
ALTER TABLE key_list ADD COLUMN rotated_to TEXT;
