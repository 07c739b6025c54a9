-- A claim takes half its room from deliveries never attempted, oldest first
-- (store::sql::Lane::First), so that after a long sink outage new events do not queue
-- behind every due retry. This partial index holds only those rows: the claim reads the
-- few it takes, however long the backlog of retries.
CREATE INDEX deliveries_first ON deliveries (sink, id)
    WHERE status = 'pending' AND attempts = 0 AND last_error IS NULL;
