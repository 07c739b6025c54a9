-- `superseded`: a deploy delivery made moot by a newer checkpoint of the same run
-- (`latest_only`); terminal, never attempted.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'superseded'));
