-- Every reward record from the reward.grants topic: grants, redemptions,
-- expiries and cancellations. record_id is the producer's idempotency key,
-- so (kind, record_id) identifies one record; duplicates collapse on merge
-- and queries dedupe with GROUP BY kind, record_id.
CREATE TABLE IF NOT EXISTS reward_grants
(
    record_id    String,
    kind         LowCardinality(String),   -- grant | redemption | expiry | cancellation | ...
    user_id      String,
    campaign     String,
    rule         String,
    prize_type   LowCardinality(String),   -- coupon | points | cash | physical | rights | gift_pack | ...
    value_cents  Int64,                    -- money value of the record (0 when none)
    points       Int64,                    -- points moved by the record (0 when none)
    budget_cents Nullable(Int64),          -- the campaign's budget when the record states it
    event_time   DateTime64(3, 'UTC'),
    payload      String,                   -- the record as published (JSON)
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    archived_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (kind, record_id);
