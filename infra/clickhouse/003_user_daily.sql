-- Daily per-user activity for BI, one row per (day, user) after merges.
-- Every column is a duplicate-insensitive aggregate (distinct ids, min/max,
-- sets), so replays never inflate it. Money is summed over the set of
-- distinct (order_id, amount_cents) pairs. Read it through user_daily_v.
CREATE TABLE IF NOT EXISTS user_daily
(
    day          Date,
    user_id      String,
    events       AggregateFunction(uniqExact, String),
    browses      AggregateFunction(uniqExactIf, String, UInt8),
    carts        AggregateFunction(uniqExactIf, String, UInt8),
    interactions AggregateFunction(uniqExactIf, String, UInt8),
    orders       AggregateFunction(uniqExactIf, String, UInt8),
    order_values AggregateFunction(groupUniqArrayIf, Tuple(String, Int64), UInt8),
    channels     AggregateFunction(groupUniqArray, String),
    first_ts     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_ts      SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, user_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS user_daily_mv TO user_daily AS
SELECT
    toDate(ts) AS day,
    user_id,
    uniqExactState(event_id) AS events,
    uniqExactIfState(event_id, type = 'browse') AS browses,
    uniqExactIfState(event_id, type = 'cart') AS carts,
    uniqExactIfState(event_id, type = 'interaction') AS interactions,
    uniqExactIfState(order_id, type = 'purchase') AS orders,
    groupUniqArrayIfState((order_id, amount_cents), type = 'purchase') AS order_values,
    groupUniqArrayState(toString(channel)) AS channels,
    min(ts) AS first_ts,
    max(ts) AS last_ts
FROM touch_events
GROUP BY day, user_id;

CREATE VIEW IF NOT EXISTS user_daily_v AS
SELECT
    day,
    user_id,
    uniqExactMerge(events) AS events,
    uniqExactIfMerge(browses) AS browses,
    uniqExactIfMerge(carts) AS carts,
    uniqExactIfMerge(interactions) AS interactions,
    uniqExactIfMerge(orders) AS orders,
    arraySum(v -> v.2, groupUniqArrayIfMerge(order_values)) AS revenue_cents,
    arraySort(groupUniqArrayMerge(channels)) AS channels,
    min(first_ts) AS first_ts,
    max(last_ts) AS last_ts
FROM user_daily
GROUP BY day, user_id;

-- AIPL stage transitions: when each user first reached each stage (lifetime,
-- not per period). Per user after merges: min times are duplicate-insensitive,
-- and order_times keeps each order's earliest time keyed by order id, so the
-- second distinct order (the repurchase that makes a user loyal) is exact too.
CREATE TABLE IF NOT EXISTS aipl_first_reached
(
    user_id     String,
    aware_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    interest_at SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    purchase_at SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC'))),
    order_times AggregateFunction(minMapIf, Array(String), Array(DateTime64(3, 'UTC')), UInt8)
)
ENGINE = AggregatingMergeTree
ORDER BY user_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS aipl_first_reached_mv TO aipl_first_reached AS
SELECT
    user_id,
    min(ts) AS aware_at,
    min(if(type IN ('interaction', 'purchase') OR (type = 'cart' AND action = 'add'), ts, NULL))
        AS interest_at,
    min(if(type = 'purchase', ts, NULL)) AS purchase_at,
    minMapIfState([order_id], [ts], type = 'purchase') AS order_times
FROM touch_events
GROUP BY user_id;

-- One row per (user, stage) reached, with the time it was first reached.
CREATE VIEW IF NOT EXISTS aipl_stage_transitions AS
SELECT user_id, stage, reached_at
FROM
(
    SELECT
        user_id,
        min(aware_at) AS aware,
        min(interest_at) AS interest,
        min(purchase_at) AS purchase,
        arraySort(minMapIfMerge(order_times).2) AS order_ts
    FROM aipl_first_reached
    GROUP BY user_id
)
ARRAY JOIN
    ['aware', 'interest', 'purchase', 'loyalty'] AS stage,
    [toNullable(aware), interest, purchase,
     if(length(order_ts) >= 2, toNullable(order_ts[2]), NULL)] AS reached_at
WHERE reached_at IS NOT NULL;
