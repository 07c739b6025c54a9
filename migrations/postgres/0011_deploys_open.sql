-- The open deploy pipelines (waiting for approval, or with a step left), newest first:
-- the status page lists every one of them, however many settled pipelines there are
-- (store/inspect.rs, OPEN_DEPLOYS: the predicate is the query's, word for word, so that
-- the planner sees it implied). Open pipelines are few, so the index is small, and it
-- is chosen with or without table statistics (the `(stage, follow_next_at)` index is
-- not, once ANALYZE has counted the stages).
CREATE INDEX deploys_open ON deploys (delivery_id)
    WHERE (stage IN ('awaiting_approval', 'deploying', 'following')
    OR (stage IN ('active', 'promoted') AND follow_next_at IS NOT NULL));
