-- Every valid touch event, one row per (user_id, event_id).
--
-- The archive consumer re-reads the input topics after a crash and Kafka may
-- deliver a record twice, so the same event can be inserted more than once.
-- ReplacingMergeTree collapses such copies on merge (they are identical: the
-- same event); queries that must be exact before a merge use FINAL or
-- GROUP BY event_id. Duplicates of one event share ts, hence the partition.
CREATE TABLE IF NOT EXISTS touch_events
(
    event_id        String,
    user_id         String,
    type            LowCardinality(String),          -- browse | cart | purchase | interaction
    ts              DateTime64(3, 'UTC'),            -- event time
    day             Date DEFAULT toDate(ts),         -- UTC calendar day of ts
    channel         LowCardinality(String),
    categories      Array(LowCardinality(String)),   -- distinct categories the event names
    action          LowCardinality(String),          -- cart: add|remove; interaction: its kind
    sku             String,                          -- cart / browse
    page            String,                          -- browse
    source          LowCardinality(String),          -- browse
    target          String,                          -- interaction
    qty             UInt32,                          -- cart
    price_cents     Int64,                           -- cart: unit price
    order_id        String,                          -- purchase
    amount_cents    Int64,                           -- purchase: order total
    currency        LowCardinality(String),          -- purchase
    coupons         Array(String),                   -- purchase: coupon ids used
    items Nested(                                    -- purchase lines
        sku         String,
        category    LowCardinality(String),
        brand       String,
        qty         UInt32,
        price_cents Int64                            -- unit price
    ),
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    archived_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (user_id, event_id);
