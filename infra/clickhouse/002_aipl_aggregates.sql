-- AIPL funnel aggregates, kept by materialized views at insert time.
--
-- Grain: one row per (day, channel, user) and per (day, category, user) after
-- merges. Each stage is a uniqExact state over event or order ids, so a
-- duplicate insert adds the same id to the same set and changes nothing:
-- these tables are exact under replays without FINAL. Read them with
-- uniqExactMerge / uniqExactIfMerge grouped by user (see pipeline/archive/aipl.py).
--   touches  every event id                      -> Awareness
--   engaged  cart-add, interaction and purchase ids -> Interest (buyers were engaged too)
--   orders   distinct order ids of purchases     -> Purchase (>= 1), Loyalty (>= 2)
CREATE TABLE IF NOT EXISTS aipl_user_daily
(
    day      Date,
    channel  LowCardinality(String),
    user_id  String,
    touches  AggregateFunction(uniqExact, String),
    engaged  AggregateFunction(uniqExactIf, String, UInt8),
    orders   AggregateFunction(uniqExactIf, String, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, channel, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS aipl_user_daily_mv TO aipl_user_daily AS
SELECT
    toDate(ts) AS day,
    channel,
    user_id,
    uniqExactState(event_id) AS touches,
    uniqExactIfState(
        event_id, type IN ('interaction', 'purchase') OR (type = 'cart' AND action = 'add')
    ) AS engaged,
    uniqExactIfState(order_id, type = 'purchase') AS orders
FROM touch_events
GROUP BY day, channel, user_id;

-- The same per category. Only events that name a category take part:
-- browses with a category, cart events, and purchases (once per distinct line
-- category). Interactions and page-only browses carry no category.
CREATE TABLE IF NOT EXISTS aipl_category_daily
(
    day      Date,
    category LowCardinality(String),
    user_id  String,
    touches  AggregateFunction(uniqExact, String),
    engaged  AggregateFunction(uniqExactIf, String, UInt8),
    orders   AggregateFunction(uniqExactIf, String, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, category, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS aipl_category_daily_mv TO aipl_category_daily AS
SELECT
    toDate(ts) AS day,
    category,
    user_id,
    uniqExactState(event_id) AS touches,
    uniqExactIfState(
        event_id, type IN ('interaction', 'purchase') OR (type = 'cart' AND action = 'add')
    ) AS engaged,
    uniqExactIfState(order_id, type = 'purchase') AS orders
FROM touch_events
ARRAY JOIN categories AS category
GROUP BY day, category, user_id;
