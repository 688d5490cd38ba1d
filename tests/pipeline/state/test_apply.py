"""apply.lua on a real Redis: each event once, an id that comes back with other
content refused as a conflicting duplicate, no total leaving the range the
state keeps exactly (a total past it used to wrap Redis's 64-bit counters), and
a customer's dedupe state bounded by the window, not by their lifetime."""

from __future__ import annotations

import msgspec
import redis

from tierflow.pipeline.state.store import Applied, StateStore, connect
from tierflow.pipeline.state.summary import DAY_MS, MAX_TOTAL, UserKeys, encode, summarize
from tierflow.schemas.events import Interaction, Item, Purchase

NOW = 1_795_000_000_000
SOURCE = "touch.purchase:0"
KEYS = UserKeys.of("u1")


def purchase(event_id: str, amount: float, qty: int = 1, ts: int | str = NOW) -> Purchase:
    return Purchase(event_id=event_id, user_id="u1", ts=ts, channel="app", order_id=f"o-{event_id}",
                    amount=amount, currency="CNY", items=[Item(sku="s1", category="snacks", qty=qty, price=amount)])


HOUR_MS = 3_600_000


def apply(store: StateStore, *events: tuple[Purchase | Interaction, int], arrival_ms: int = NOW) -> Applied:
    return store.apply({("u1", SOURCE): [encode(event, NOW, offset, arrival_ms) for event, offset in events]})


def state(client: redis.Redis) -> dict[str, dict[str, str]]:
    return {key: client.hgetall(key) for key in (KEYS.profile, KEYS.days, KEYS.categories, KEYS.skus, KEYS.offsets)}


def test_a_total_past_64_bits_is_refused_and_changes_nothing(redis_url: str) -> None:
    """Reproduces the wrap: an amount of 1e17 (1e19 cents) made lifetime money negative."""
    client = connect(redis_url)
    store = StateStore(client, 400)
    assert apply(store, (purchase("ok", 10.5), 0)).count == 1
    before = state(client)
    result = apply(store, (purchase("huge", 1e17), 1))
    assert (result.count, result.refused) == (0, {(("u1", SOURCE), 0): "amount_out_of_range"})
    assert state(client) == before
    assert summarize("u1", store.read("u1"), NOW, [30], 400).monetary_cents["lifetime"] == 1050


def test_lifetime_totals_stop_exactly_at_the_bound(redis_url: str) -> None:
    client = connect(redis_url)
    store = StateStore(client, 400)
    apply(store, (purchase("first", 1.0), 0))
    # As if many orders came before: room for one more yuan and one cent, not two cents.
    client.hset(KEYS.profile, mapping={"pa": MAX_TOTAL - 101, "la": MAX_TOTAL - 101})
    assert apply(store, (purchase("fits", 1.0), 1)).count == 1
    assert int(client.hget(KEYS.profile, "pa")) == MAX_TOTAL - 1
    refused = apply(store, (purchase("two-cents", 0.02), 2), (purchase("zero", 0.0), 3))
    assert (refused.count, refused.refused) == (1, {(("u1", SOURCE), 0): "amount_out_of_range"})
    assert int(client.hget(KEYS.profile, "pa")) == MAX_TOTAL - 1
    # The refused event, sent again, is refused again (its dead letter is sent at least once).
    again = apply(store, (purchase("two-cents", 0.02), 2))
    assert again.refused == {(("u1", SOURCE), 0): "amount_out_of_range"}
    # Quantities, which bound every category's and sku's quantity.
    client.hset(KEYS.profile, "lq", MAX_TOTAL - 2)
    many = apply(store, (purchase("qty", 0.0, qty=3), 4))
    assert many.refused == {(("u1", SOURCE), 0): "quantity_out_of_range"}


def test_same_id_other_content_is_a_conflicting_duplicate(redis_url: str) -> None:
    client = connect(redis_url)
    store = StateStore(client, 400)
    original, forged = purchase("e1", 10.0), purchase("e1", 99.0)
    assert apply(store, (original, 5)).count == 1
    before = state(client)
    conflict = {(("u1", SOURCE), 0): "conflicting_duplicate"}
    # Sent again later with other content; then replayed at its own offset after a crash.
    for offset in (9, 9):
        result = apply(store, (forged, offset))
        assert (result.count, result.refused) == (0, conflict)
        assert state(client) == before
    # The same content again, also with its time written another way: silently the same event.
    same_instant = msgspec.structs.replace(original, ts="2026-11-18T08:26:40+00:00")
    assert NOW == 1_795_000_000_000  # 2026-11-18T08:26:40Z
    for event, offset in ((original, 5), (original, 12), (same_instant, 13)):
        result = apply(store, (event, offset))
        assert (result.count, result.refused) == (0, {})
    assert state(client)[KEYS.profile] == before[KEYS.profile]


def test_conflict_inside_one_call_and_beside_valid_events(redis_url: str) -> None:
    client = connect(redis_url)
    store = StateStore(client, 400)
    sign_in = Interaction(event_id="i1", user_id="u1", ts=NOW, channel="app", kind="sign_in")
    result = apply(store, (purchase("e1", 1.0), 1), (purchase("e1", 2.0), 1), (sign_in, 2))
    assert (result.count, result.refused) == (2, {(("u1", SOURCE), 1): "conflicting_duplicate"})
    assert int(client.hget(KEYS.profile, "pa")) == 100


def test_a_resend_counts_once_within_the_window_and_a_replay_at_any_age(redis_url: str) -> None:
    client = connect(redis_url)
    store = StateStore(client, 400, dedupe_window_hours=24)
    original = purchase("e1", 10.0)
    assert apply(store, (original, 5)).count == 1
    # The app sends it again (a new offset) 23 hours later: the same event.
    assert apply(store, (original, 6), arrival_ms=NOW + 23 * HOUR_MS).count == 0
    # Other content under the id within the window: dead-lettered, nothing changes.
    forged = apply(store, (purchase("e1", 99.0), 7), arrival_ms=NOW + 23 * HOUR_MS)
    assert forged.refused == {(("u1", SOURCE), 0): "conflicting_duplicate"}
    # A year later, the record at offset 5 is replayed (a reset consumer): still once.
    assert apply(store, (original, 5), arrival_ms=NOW + 365 * DAY_MS).count == 0
    assert client.hget(KEYS.profile, "pa") == "1000"
    # The documented limit: an app resending the id a window after it arrived has it counted again.
    assert apply(store, (original, 8), arrival_ms=NOW + 25 * HOUR_MS).count == 1
    assert client.hget(KEYS.profile, "pa") == "2000"


def test_the_dedupe_state_is_bounded_by_the_window(redis_url: str) -> None:
    """Three events a day for 200 days: the ids kept are those of at most two windows."""
    client = connect(redis_url)
    store = StateStore(client, 400, dedupe_window_hours=24)
    offset = 0
    for day in range(200):
        for n in range(3):
            offset += 1
            event = Interaction(event_id=f"d{day}-{n}", user_id="u1", ts=NOW, channel="app", kind="sign_in")
            assert apply(store, (event, offset), arrival_ms=NOW + day * DAY_MS + n * HOUR_MS).count == 1
    assert client.hget(KEYS.profile, "ni") == "600"
    # 6 ids at most, the watermark and the next pruning time.
    assert client.hlen(KEYS.seen) <= 8
    assert (client.memory_usage(KEYS.seen) or 0) < 400


def test_state_of_earlier_versions_is_read_then_compacted_on_the_next_event(redis_url: str) -> None:
    """Earlier versions kept every id (id -> digest), the watermarks in a key of their own
    and one counter per field. Such state reads the same; the customer's next event moves
    the watermarks into the dedupe hash, drops the ids and packs the counters, and replays
    of what the earlier version applied stay no-ops."""
    client = connect(redis_url)
    store = StateStore(client, 400, dedupe_window_hours=24)
    day = NOW // DAY_MS
    client.hset(KEYS.profile, mapping={"pc": 1, "pa": 500, "la": 500, "lq": 2, "pwd": 1, "n": 1, "maxday": day,
                                       "fs": NOW, "ls": NOW, "fp": NOW, "lp": NOW})
    client.hset(KEYS.days, mapping={f"c{day}": 1, f"a{day}": 500})
    client.hset(KEYS.categories, mapping={"q:snacks": 2, "a:snacks": 500, "o:snacks": 1})
    client.hset(KEYS.skus, mapping={"q:s1": 2, "o:s1": 1})
    client.hset(KEYS.seen, mapping={f"old-{i}": "0123456789abcdef" for i in range(100)})
    client.hset(KEYS.offsets, SOURCE, 41)
    before = summarize("u1", store.read("u1"), NOW, [30], 400)
    assert (before.frequency, before.monetary_cents) == ({"30d": 1, "lifetime": 1}, {"30d": 500, "lifetime": 500})
    assert (before.categories, before.skus) == ({"snacks": {"orders": 1, "qty": 2, "amount": 5.0}},
                                                {"s1": {"orders": 1, "qty": 2}})

    replayed = apply(store, (purchase("old-7", 5.0, qty=2), 41), (purchase("new-1", 5.0), 42))
    assert (replayed.count, replayed.refused) == (1, {})
    assert not client.exists(KEYS.offsets)
    assert client.hlen(KEYS.seen) == 3  # new-1, the watermark and the next pruning time
    assert client.hgetall(KEYS.days) == {f"c{day}": "2:1000"}
    assert client.hgetall(KEYS.categories) == {"snacks": "2:3:1000"}
    assert client.hgetall(KEYS.skus) == {"s1": "2:3"}
    after = summarize("u1", store.read("u1"), NOW, [30], 400)
    assert after.monetary_cents == {"30d": 1000, "lifetime": 1000}
    assert (after.categories, after.skus) == ({"snacks": {"orders": 2, "qty": 3, "amount": 10.0}},
                                              {"s1": {"orders": 2, "qty": 3}})
    assert apply(store, (purchase("old-7", 5.0), 41)).count == 0


def test_an_order_counts_once_per_category_and_sku_with_its_lines_summed(redis_url: str) -> None:
    client = connect(redis_url)
    store = StateStore(client, 400)
    lines = [Item(sku="s1", category="snacks", qty=2, price=1.5), Item(sku="s2", category="snacks", qty=1, price=4.0),
             Item(sku="s1", category="snacks", qty=1, price=1.5)]
    order = Purchase(event_id="o1", user_id="u1", ts=NOW, channel="app", order_id="o1", amount=8.5,
                     currency="CNY", items=lines)
    assert apply(store, (order, 1)).count == 1
    summary = summarize("u1", store.read("u1"), NOW, [30], 400)
    assert summary.categories == {"snacks": {"orders": 1, "qty": 4, "amount": 8.5}}
    assert summary.skus == {"s1": {"orders": 1, "qty": 3}, "s2": {"orders": 1, "qty": 1}}
