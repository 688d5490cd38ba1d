-- Every change of a user's segment, lifecycle stage, membership tier or AIPL
-- stage, from the tier.changes topic. The producer numbers changes per user
-- and dimension (version), so (dimension, user_id, version) identifies one
-- change: duplicates collapse on merge, and queries dedupe with
-- argMax(..., version) or GROUP BY version.
CREATE TABLE IF NOT EXISTS tier_changes
(
    user_id     String,
    dimension   LowCardinality(String),    -- segment | lifecycle | membership | aipl | ...
    old         Nullable(String),          -- NULL when the user had no value before
    new         Nullable(String),          -- NULL when the user lost the value
    reason      LowCardinality(String),    -- event | time_decay | means_shift | config_change
    version     UInt64,                    -- per user and dimension: 1, 2, 3, ...
    seq         UInt64,                    -- per user over all dimensions: 1, 2, 3, ...
    event_time  DateTime64(3, 'UTC'),
    scores      String,                    -- JSON object as published (e.g. {"r":5,"f":3,"m":4})
    points      Int64,                     -- membership points score after the change
    repurchases UInt32,                    -- the user's repurchase count after the change
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    archived_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (dimension, user_id, version);
