-- XXH3-64 of `raw` (as a signed integer), so that loading the state needs no object text:
-- memory keeps only the digest. NULL for rows written before this column existed; the
-- first load computes and stores it.
ALTER TABLE checkpoints ADD COLUMN raw_digest INTEGER;

-- The digest (hex) of the last listing a commit left the target's state agreeing with
-- for good (diff::Settled): after a restart, the same listing needs no decoding.
ALTER TABLE targets ADD COLUMN listing_digest TEXT;
