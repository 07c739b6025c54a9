-- The digest (hex) of the last listing a commit left the target's state agreeing with
-- for good (diff::Settled): after a restart, the same listing needs no decoding.
ALTER TABLE targets ADD COLUMN listing_digest TEXT;
