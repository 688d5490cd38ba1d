-- Insert deduplication on the tables the archive writer inserts into. Each
-- insert carries an insert_deduplication_token derived from the Kafka offsets
-- of its batch; a MergeTree drops an insert whose token it saw among its last
-- non_replicated_deduplication_window inserts, so a batch inserted again (a
-- crash between insert and offset commit, a replay) adds nothing. On a cluster
-- (ReplicatedMergeTree) replicated_deduplication_window does this already.
-- The tables stay duplicate-proof on their own (ReplacingMergeTree, aggregates
-- over distinct ids) for re-deliveries that fall into other batches.
ALTER TABLE touch_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE tier_changes MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE reward_grants MODIFY SETTING non_replicated_deduplication_window = 1000;

-- Every points movement, one row per reward record (deduplicated): grants add
-- the points of the lots they issued, expiries and spends take them away,
-- adjustments either. Grants archived before the archive filled points_delta
-- for them carry 0 there; their points are read back from the record itself.
CREATE VIEW IF NOT EXISTS points_ledger AS
SELECT
    record_id,
    kind,
    user_id,
    at,
    campaign,
    if(kind = 'grant' AND points_delta = 0,
       arraySum(arrayMap(item -> JSONExtractInt(item, 'points'), JSONExtractArrayRaw(payload, 'items'))),
       points_delta) AS points
FROM
(
    SELECT kind, record_id, any(user_id) AS user_id, any(at) AS at, any(campaign) AS campaign,
           any(points_delta) AS points_delta, any(payload) AS payload
    FROM reward_grants
    GROUP BY kind, record_id
)
WHERE points != 0;
