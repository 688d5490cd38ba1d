-- Every record from the reward.grants topic: grants, cancellations,
-- redemptions (and rejected ones), points expiry/spend/adjustments,
-- withdrawals and fulfilment updates. Columns mirror the record
-- (pipeline/rewards/records.py); the record itself is kept in payload.
-- record_id is stable per effect, so (kind, record_id) identifies one record:
-- duplicates collapse on merge, and queries dedupe with GROUP BY kind, record_id.
CREATE TABLE IF NOT EXISTS reward_grants
(
    record_id      String,
    kind           LowCardinality(String),   -- grant | cancellation | redemption | expiry | ...
    user_id        String,
    at             DateTime64(3, 'UTC'),     -- the time the decision used
    recorded_at    DateTime64(3, 'UTC'),     -- when the reward engine wrote the record
    campaign       String,
    rule           String,
    prize          String,
    prize_type     LowCardinality(String),   -- coupon | points | cash_envelope | physical | ...
    trigger        String,                   -- tier:<dim>:v<n> | event:<id> | code:<CODE> | step:<n>
    cost_cents     Int64,                    -- budget charged by this record (0 when none)
    points_delta   Int64,                    -- points moved by this record (0 when none)
    amount_cents   Int64,                    -- cash moved (envelopes, withdrawals; 0 when none)
    order_id       String,                   -- redemptions: the order
    order_cents    Int64,                    -- redemptions: the order's value
    discount_cents Int64,                    -- redemptions: the discount given
    item_ids       Array(String),            -- wallet items the record concerns
    item_types     Array(LowCardinality(String)),
    item_values_cents Array(Int64),
    payload        String,                   -- the record as published (JSON)
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    archived_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (kind, record_id);
