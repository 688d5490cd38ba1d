-- Refunds, from the refund rows of touch_events (type 'refund': the order refunded, the
-- money returned in amount_cents). Each event counts once (grouped by event_id), so both
-- views are exact under duplicate inserts without FINAL.
--
-- order_refunds_v: one row per refunded order that is archived: its amount, its refunds,
-- the money returned (capped at the amount, as the state caps refunds that came before
-- their order), the net amount and whether it was refunded in full (it then no longer
-- counts as a purchase in the state).
CREATE VIEW IF NOT EXISTS order_refunds_v AS
SELECT
    o.user_id AS user_id,
    o.order_id AS order_id,
    o.day AS order_day,
    o.order_cents AS order_cents,
    r.refunds AS refunds,
    least(r.returned_cents, o.order_cents) AS refunded_cents,
    o.order_cents - least(r.returned_cents, o.order_cents) AS net_cents,
    r.returned_cents >= o.order_cents AS full_refund
FROM
(
    SELECT user_id, order_id, min(day) AS day, any(amount_cents) AS order_cents
    FROM touch_events
    WHERE type = 'purchase'
    GROUP BY user_id, order_id
) AS o
INNER JOIN
(
    SELECT user_id, order_id, count() AS refunds, sum(cents) AS returned_cents
    FROM
    (
        SELECT user_id, event_id, any(order_id) AS order_id, any(amount_cents) AS cents
        FROM touch_events
        WHERE type = 'refund'
        GROUP BY user_id, event_id
    )
    GROUP BY user_id, order_id
) AS r
ON o.user_id = r.user_id AND o.order_id = r.order_id;

-- user_refunds_daily_v: refunds and money returned per customer and day of the refund.
CREATE VIEW IF NOT EXISTS user_refunds_daily_v AS
SELECT day, user_id, count() AS refunds, sum(cents) AS refunded_cents
FROM
(
    SELECT user_id, event_id, any(day) AS day, any(amount_cents) AS cents
    FROM touch_events
    WHERE type = 'refund'
    GROUP BY user_id, event_id
)
GROUP BY day, user_id;
