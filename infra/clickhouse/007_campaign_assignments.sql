-- Holdouts: each customer's arm in a campaign that keeps a control group
-- (treated or control), from the `assignment` records on reward.grants. The
-- materialized view copies them as the archive writer inserts them into
-- reward_grants; assigned_at is the trigger that first put the customer in the
-- campaign. One row per (campaign, user_id) after merges; queries take the
-- earliest with GROUP BY campaign, user_id.
CREATE TABLE IF NOT EXISTS campaign_assignments
(
    campaign    String,
    user_id     String,
    arm         LowCardinality(String),   -- treated | control
    assigned_at DateTime64(3, 'UTC'),
    rule        String,
    trigger     String,
    record_id   String,
    archived_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_assignments_mv TO campaign_assignments AS
SELECT campaign, user_id, JSONExtractString(payload, 'reason') AS arm, at AS assigned_at, rule, trigger,
       record_id
FROM reward_grants
WHERE kind = 'assignment';
