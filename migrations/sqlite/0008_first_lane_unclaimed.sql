-- The first lane takes deliveries never attempted and not claimed: a claim takes its rows
-- out of this index (and moves their due time to the lease's end), so a claim no longer
-- reads, and passes over, every delivery other claims hold. A claim that lapses leaves
-- its delivery to the other lane, in due order.
DROP INDEX deliveries_first;
CREATE INDEX deliveries_first ON deliveries (sink, id)
    WHERE status = 'pending' AND attempts = 0 AND last_error IS NULL AND claimed_until IS NULL;
