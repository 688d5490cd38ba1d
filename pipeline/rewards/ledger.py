"""Reward effects in Redis: every state change is one Lua script (the *.lua files beside this module).

Key layout
----------
Every key is preceded by the deployment's namespace (pipeline/keyspace.py).

Per user, under the user's hash tag (`{u:<id>}:rw:*`, see `RewardKeys`): grants by
idempotency key, per-rule counts, wallet items (immutable JSON), item status,
points lots (remaining, expiry), points ledger, referral state and invites,
outbox, dedupe marks, redemptions, account (withdrawn cash, shipping address).

Per campaign, under the campaign's own hash tag (`{rw:c:<id>}*`, see
`CampaignKeys`): money spent, reservations by idempotency key, inventory used,
universal-code pools. A prize with finite stock belongs to one campaign (checked
at load), so budget, inventory and pools of one grant sit in one slot.

Global, under `{rw}`: users with reward state (for reports), users with undelivered
outbox records, and the next points expiry per user.

Why this stays correct on Redis Cluster
---------------------------------------
A grant touches two slots: its campaign's and its user's. No script spans both;
instead a grant is a reservation followed by an idempotent write:

1. Reserve on the campaign slot (`reserve.lua`): check and take budget,
   inventory and pool coupons, and record the reservation under the grant's
   idempotency key (rule, user, trigger). A second reserve with the same key takes
   nothing more and returns the first reservation (same coupons). Two workers
   granting at once serialise on this one script, so spend never exceeds the
   budget and no pool coupon is handed out twice.
2. Write the user side (`grant.lua`): at most once per idempotency key,
   within the per-user limit, with the wallet entries, ledger lines and outbox
   records in the same script.
3. If the user side refuses (per-user limit reached, a concurrent referral
   step-up), release the reservation (`release.lua`): budget, inventory
   and coupons return. A duplicate is not refused: its reservation is the one
   the first write used.

A crash between 1 and 2 leaves a reservation without a wallet entry; the
trigger is replayed (the worker commits its input offset only after the engine
returns), step 1 returns the same reservation and step 2 completes the grant.
Reservations whose trigger never comes back (a CLI claim abandoned mid-way) stay
counted as spent: the budget errs on the safe side.

Global indexes (outbox, points expiry, users) are written before the user-side
scripts (ahead of them in the same pipeline) and again once they returned; a
sweeper removes an entry first and re-checks the user's keys afterwards.
Whatever the interleaving, an index entry exists while the user has something
due, at the cost of occasional empty visits.

Batches: each method below that takes a list sends one pipeline, so a consumer
batch costs a fixed number of round trips (granting.py). Scripts are called by
hash; Redis that lost them (a restart) gets them again and the pipeline runs
again, which every script here allows: each is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from redis.exceptions import NoScriptError

from tierflow.pipeline import keyspace, lua
from tierflow.pipeline.lua import Pipeline, Redis
from tierflow.pipeline.rewards.catalogue import initial_status
from tierflow.pipeline.rewards.report import RawCampaign
from tierflow.pipeline.rewards.wallet import RawWallet, RewardError, encode_item
from tierflow.pipeline.state.summary import UserKeys, user_tag
from tierflow.schemas.reward_grants import RewardItem, RewardRecord, decode, encode

USERS = keyspace.key("{rw}:users")
OUTBOX_INDEX = keyspace.key("{rw}:outbox")
EXPIRY_INDEX = keyspace.key("{rw}:expiry")
# Compare-and-set commits retry on a concurrent change to the same wallet;
# events of one user arrive on one partition, so more than one retry is rare.
CAS_ATTEMPTS = 5
_stored = msgspec.json.Decoder(list[RewardRecord])


@dataclass(frozen=True, slots=True)
class RewardKeys:
    """One user's reward keys, in the order every user-side script expects them."""

    grants: str
    counts: str
    items: str
    status: str
    remaining: str
    expiry: str
    ledger: str
    referral: str
    outbox: str
    dedupe: str
    redemptions: str
    account: str
    tag: str

    @classmethod
    def of(cls, user_id: str) -> RewardKeys:
        tag = user_tag(user_id)
        names = ("g", "n", "w", "s", "p", "e", "l", "r", "o", "x", "d", "a")
        return cls(*(f"{tag}:rw:{n}" for n in names), tag=tag)

    def as_list(self) -> list[str]:
        return [self.grants, self.counts, self.items, self.status, self.remaining, self.expiry,
                self.ledger, self.referral, self.outbox, self.dedupe, self.redemptions, self.account]

    def invites(self, rule_id: str) -> str:
        return f"{self.tag}:rw:i:{rule_id}"

    # 1-based indexes into as_list(), as update.lua addresses keys.
    ITEMS, STATUS, REMAINING, EXPIRY, LEDGER, OUTBOX, ACCOUNT = 3, 4, 5, 6, 7, 9, 12


@dataclass(frozen=True, slots=True)
class CampaignKeys:
    hash: str
    reservations: str
    stock: str
    tag: str

    @classmethod
    def of(cls, campaign_id: str) -> CampaignKeys:
        tag = keyspace.key("{rw:c:" + campaign_id + "}")
        return cls(tag, f"{tag}:res", f"{tag}:stock", tag)

    def pool(self, prize_id: str) -> str:
        return f"{self.tag}:pool:{prize_id}"


@dataclass(frozen=True, slots=True)
class PoolNeed:
    prize_id: str
    count: int
    code: str
    size: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the campaign side answered: ok (new), held (reserved before), or why not."""

    status: str  # ok | held | budget | stock | pool
    cost_cents: int = 0
    codes: dict[str, list[str]] = field(default_factory=dict)
    prize_id: str | None = None  # the prize out of stock / whose pool is empty

    @property
    def reserved(self) -> bool:
        return self.status in ("ok", "held")


@dataclass
class Update:
    """A compare-and-set commit for update.lua (key indexes from RewardKeys)."""

    checks: list[list[Any]] = field(default_factory=list)
    hset: list[list[Any]] = field(default_factory=list)
    zadd: list[list[Any]] = field(default_factory=list)
    zrem: list[list[Any]] = field(default_factory=list)
    push: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RedeemOp:
    """One coupon named on a purchase, for redeem.lua, written once per `dedupe`."""

    dedupe: str
    record: RewardRecord  # the redemption, or the rejection when `coupon` is ""
    coupon: str = ""  # the wallet item to mark redeemed if it is still active
    detail: Mapping[str, object] | None = None  # kept beside the redeemed coupon
    rejected: RewardRecord | None = None  # written instead when the coupon is no longer active


@dataclass(frozen=True, slots=True)
class ReserveCall:
    """One reserve.lua call: what a grant takes from its campaign."""

    campaign_id: str
    key: str
    cost_cents: int
    budget_cents: int | None
    stock: Sequence[tuple[str, int, int]] = ()  # (prize, units, limit)
    pools: Sequence[PoolNeed] = ()


@dataclass(frozen=True, slots=True)
class GrantCall:
    """One grant.lua call: a grant's user side (limit 0: a step-up, neither checked nor counted)."""

    user_id: str
    key: str
    rule_id: str
    limit: int
    records: Sequence[RewardRecord]
    items: Sequence[RewardItem]
    referral: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RedeemCall:
    """One redeem.lua call: the coupons named on one purchase."""

    user_id: str
    ops: Sequence[RedeemOp]


@dataclass(frozen=True, slots=True)
class Wants:
    """What a batch of reward decisions reads, in one round trip."""

    grants: Sequence[tuple[str, str]] = ()  # (user, idempotency key): the grant, if made
    counts: Sequence[tuple[str, str]] = ()  # (user, rule): grants of the rule so far
    addresses: Sequence[str] = ()  # users whose shipping address a physical prize needs
    applied: Sequence[tuple[str, str]] = ()  # (user, dedupe key): written before?
    invites: Sequence[tuple[str, str, str]] = ()  # (user, rule, invitee): count it, then how many
    referrals: Sequence[tuple[str, str]] = ()  # (user, rule): the referral state
    wallets: Sequence[str] = ()


@dataclass
class Reads:
    grants: dict[str, list[RewardRecord] | None]
    counts: dict[tuple[str, str], int]
    addresses: dict[str, str | None]
    applied: set[str]
    invites: dict[tuple[str, str], int] = field(default_factory=dict)
    referrals: dict[tuple[str, str], str] = field(default_factory=dict)
    wallets: dict[str, RawWallet] = field(default_factory=dict)


# A user to index, with the soonest points expiry the write adds (None: none).
Touch = tuple[str, int | None]
# grant.lua's answer: (granted | duplicate | limit | conflict, the stored records when a duplicate).
GrantReply = tuple[str, list[RewardRecord] | None]


def dedupe_key(*parts: object) -> str:
    """Unambiguous whatever characters the parts hold."""
    return orjson.dumps(parts).decode()


def expiry_score(expires_ms: int | None) -> str:
    return "+inf" if expires_ms is None else str(expires_ms)


def points_entry(op: str, lot: str, points: int, at_ms: int, ref: str, expires_ms: int | None = None) -> str:
    """One line of the points ledger (earn, spend, adjust, expire)."""
    return orjson.dumps({"op": op, "lot": lot, "points": points, "at_ms": at_ms, "ref": ref,
                         "expires_ms": expires_ms}).decode()


def grant_payload(records: Sequence[RewardRecord], items: Sequence[RewardItem],
                  referral: Mapping[str, str] | None = None) -> dict[str, object]:
    """What grant.lua writes for one grant."""
    encoded = [encode(r).decode() for r in records]
    ref = records[-1].idempotency_key or ""
    lots = [i for i in items if i.type == "points"]
    return {
        "stored": "[" + ",".join(encoded) + "]",
        "records": encoded,
        "items": [[i.item_id, encode_item(i), initial_status(i)] for i in items],
        "lots": [[i.item_id, i.points, expiry_score(i.expires_ms)] for i in lots],
        "ledger": [points_entry("earn", i.item_id, i.points or 0, i.granted_ms, ref, i.expires_ms) for i in lots],
        "referral": referral,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Ledger:
    """Thin wrappers around the reward scripts and reads. No decisions here: the
    caller decides (`commit` runs the caller's `decide` on the wallet it read).
    Every user-side write indexes the user before and after itself."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._reserve = lua.register(client, __file__, "reserve")
        self._release = lua.register(client, __file__, "release")
        self._grant = lua.register(client, __file__, "grant")
        self._redeem = lua.register(client, __file__, "redeem")
        self._update = lua.register(client, __file__, "update")
        self._ack = lua.register(client, __file__, "ack")
        self._scripts = (self._reserve, self._release, self._grant, self._redeem, self._update, self._ack)

    def _scripted(self, queue: Callable[[Pipeline], None]) -> list[Any]:
        """Run the commands `queue` adds, scripts called by hash (no SCRIPT EXISTS round
        trip). When Redis has lost the scripts (a restart) it ran none of them (on a cluster,
        the nodes that had them ran theirs, and every script here is idempotent): load them
        and run the whole pipeline again. Raises the first error a command met."""
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                lua.load(self.client, self._scripts)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        raise AssertionError("unreachable: the second attempt returns or raises")

    # --- campaign side -------------------------------------------------------

    def campaign(self, campaign_id: str, pools: Sequence[str]) -> RawCampaign:
        ck = CampaignKeys.of(campaign_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(ck.hash)
        pipe.hlen(ck.reservations)
        pipe.hgetall(ck.stock)
        for prize in pools:
            pipe.scard(ck.pool(prize))
        head, reservations, stock, *left = pipe.execute()
        return RawCampaign(_strs(head), int(reservations), _strs(stock), dict(zip(pools, map(int, left), strict=True)))

    # --- batches: each call is one pipelined round trip, whatever its size -------

    def first_purchases(self, users: Collection[str]) -> dict[str, int]:
        """Each user's earliest purchase time, from the state store's profile (events are
        applied there before rewards see them); users with none left out."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hget(UserKeys.of(user).profile, "fp")
        return {user: int(v) for user, v in zip(users, pipe.execute(), strict=True) if v is not None}

    def read_wave(self, wants: Wants) -> Reads:
        pipe = self.client.pipeline(transaction=False)
        for user, key in wants.grants:
            pipe.hget(RewardKeys.of(user).grants, key)
        for user, rule in wants.counts:
            pipe.hget(RewardKeys.of(user).counts, rule)
        for user in wants.addresses:
            pipe.hget(RewardKeys.of(user).account, "address")
        for user, dedupe in wants.applied:
            pipe.hexists(RewardKeys.of(user).dedupe, dedupe)
        for user, rule, invitee in wants.invites:
            key = RewardKeys.of(user).invites(rule)
            pipe.sadd(key, invitee)  # each accepted invite counts once, however often it is replayed
            pipe.scard(key)
        for user, rule in wants.referrals:
            pipe.hget(RewardKeys.of(user).referral, rule)
        for user in wants.wallets:
            self._queue_wallet(pipe, user)
        replies = iter(pipe.execute())
        reads = Reads(
            grants={key: None if (v := next(replies)) is None else _stored.decode(v) for _, key in wants.grants},
            counts={want: int(next(replies) or 0) for want in wants.counts},
            addresses={user: None if (v := next(replies)) is None else _text(v) for user in wants.addresses},
            applied={dedupe for _, dedupe in wants.applied if next(replies)},
        )
        for user, rule, _ in wants.invites:
            next(replies)
            reads.invites[(user, rule)] = int(next(replies))
        for want in wants.referrals:
            reads.referrals[want] = "" if (v := next(replies)) is None else _text(v)
        for user in wants.wallets:
            reads.wallets[user] = _wallet(replies)
        return reads

    def reserve_all(self, calls: Sequence[ReserveCall]) -> list[Reservation]:
        """reserve.lua per call, in order."""

        def queue(pipe: Pipeline) -> None:
            for call in calls:
                ck = CampaignKeys.of(call.campaign_id)
                needs = {"stock": [list(s) for s in call.stock],
                         "pools": [[p.prize_id, p.count, p.code, p.size] for p in call.pools]}
                lua.call(pipe, self._reserve, [ck.hash, ck.reservations, ck.stock,
                                            *(ck.pool(p.prize_id) for p in call.pools)],
                      [call.key, call.cost_cents, -1 if call.budget_cents is None else call.budget_cents,
                       orjson.dumps(needs)])

        return [_reservation(reply) for reply in self._scripted(queue)] if calls else []

    def write_all(self, calls: Sequence[GrantCall | RedeemCall],
                  touches: Sequence[Touch] = ()) -> list[GrantReply | list[RewardRecord]]:
        """Index the users to be written (`touches`), then grant.lua or redeem.lua per call,
        in order: a grant's (status, the stored records when a duplicate); a redemption's
        records newly written. One pipeline: sent, it runs whole even if this process dies."""
        args = [[call.key, call.rule_id, call.limit, orjson.dumps(grant_payload(call.records, call.items,
                                                                                 call.referral))]
                if isinstance(call, GrantCall) else [orjson.dumps([_redeem_payload(op) for op in call.ops])]
                for call in calls]

        def queue(pipe: Pipeline) -> None:
            _index(pipe, touches)
            for call, call_args in zip(calls, args, strict=True):
                script = self._grant if isinstance(call, GrantCall) else self._redeem
                lua.call(pipe, script, RewardKeys.of(call.user_id).as_list(), call_args)

        replies = self._scripted(queue)
        return [_grant_reply(reply) if isinstance(call, GrantCall) else [decode(r) for r in reply]
                for call, reply in zip(calls, replies[len(replies) - len(calls):], strict=True)]

    def settle(self, releases: Sequence[tuple[str, str, Sequence[str]]], touches: Sequence[Touch]) -> None:
        """Give back the reservations (campaign, key, pool prizes) whose user side refused,
        and index the written users again."""

        def queue(pipe: Pipeline) -> None:
            for campaign_id, key, pool_prizes in releases:
                ck = CampaignKeys.of(campaign_id)
                lua.call(pipe, self._release, [ck.hash, ck.reservations, ck.stock, *(ck.pool(p) for p in pool_prizes)],
                      [key, orjson.dumps(list(pool_prizes))])
            _index(pipe, touches)

        self._scripted(queue)

    # --- user side -----------------------------------------------------------

    def touch(self, user_id: str, expiry_ms: int | None = None) -> None:
        """Index the user before and after a user-side write (see the module docstring)."""
        pipe = self.client.pipeline(transaction=False)
        _index(pipe, [(user_id, expiry_ms)])
        pipe.execute()

    def applied(self, user_id: str, dedupe: str) -> bool:
        return bool(self.client.hexists(RewardKeys.of(user_id).dedupe, dedupe))

    def update(self, user_id: str, dedupe: str, update: Update, expiry_ms: int | None = None) -> int:
        """update.lua: 1 applied, 0 conflict, -1 applied before."""
        self.touch(user_id, expiry_ms)
        result = int(self._update(keys=RewardKeys.of(user_id).as_list(), args=[_update_payload(dedupe, update)]))
        self.touch(user_id, expiry_ms)
        return result

    def update_all(self, updates: Sequence[tuple[str, str, Update]]) -> list[int]:
        """update.lua per (user, dedupe, update), in order, between two indexings of the users."""
        users = [(user, None) for user in dict.fromkeys(user for user, _, _ in updates)]
        self.touch_all(users)

        def queue(pipe: Pipeline) -> None:
            for user, dedupe, update in updates:
                lua.call(pipe, self._update, RewardKeys.of(user).as_list(), [_update_payload(dedupe, update)])

        results = [int(r) for r in self._scripted(queue)]
        self.touch_all(users)
        return results

    def touch_all(self, touches: Sequence[Touch]) -> None:
        pipe = self.client.pipeline(transaction=False)
        _index(pipe, touches)
        pipe.execute()

    def commit(self, user_id: str, dedupe: str, decide: Callable[[RawWallet], Update],
               expiry_ms: int | None = None) -> bool:
        """Read the wallet, decide, commit with compare-and-set; decide again on a conflict.
        Once per dedupe key: False when it was applied before (nothing is decided again)."""
        for _ in range(CAS_ATTEMPTS):
            if self.applied(user_id, dedupe):
                return False
            result = self.update(user_id, dedupe, decide(self.read(user_id)), expiry_ms)
            if result != 0:
                return result == 1
        raise RewardError(f"user {user_id!r}: wallet kept changing, try again")

    def read(self, user_id: str) -> RawWallet:
        return self.read_all([user_id])[user_id]

    def read_all(self, users: Collection[str]) -> dict[str, RawWallet]:
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            self._queue_wallet(pipe, user)
        replies = iter(pipe.execute())
        return {user: _wallet(replies) for user in users}

    @staticmethod
    def _queue_wallet(pipe: Pipeline, user_id: str) -> None:
        keys = RewardKeys.of(user_id)
        for name in (keys.items, keys.status, keys.remaining, keys.redemptions, keys.account):
            pipe.hgetall(name)

    def grants(self, user_id: str) -> list[RewardRecord]:
        """The records of every grant a user received (step-ups include their cancellations)."""
        return [r for v in self.client.hvals(RewardKeys.of(user_id).grants) for r in _stored.decode(v)]

    def users(self) -> Iterator[str]:
        for user in self.client.sscan_iter(USERS, count=1000):
            yield _text(user)

    # --- outbox --------------------------------------------------------------

    def outbox(self, max_records: int) -> dict[str, list[str]]:
        """Undelivered records, oldest first per user, up to about max_records in all."""
        found: dict[str, list[str]] = {}
        total = 0
        for user in self.client.sscan_iter(OUTBOX_INDEX, count=1000):
            user_id = _text(user)
            records = [_text(r) for r in self.client.lrange(RewardKeys.of(user_id).outbox, 0, max_records - total - 1)]
            if records:
                found[user_id] = records
                total += len(records)
            else:
                self.unindex_outbox([user_id])
            if total >= max_records:
                break
        return found

    def outbox_of(self, users: Collection[str]) -> dict[str, list[str]]:
        """These users' undelivered records, oldest first (users with none left out)."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.lrange(RewardKeys.of(user).outbox, 0, -1)
        return {user: [_text(r) for r in rows] for user, rows in zip(users, pipe.execute(), strict=True) if rows}

    def tidy_outbox(self, users: Collection[str]) -> set[str]:
        """Those of these users with undelivered records; the others leave the index
        (a write only indexes its user before and after itself, whether it wrote a record or not)."""
        holding = self._holding(users)
        self.unindex_outbox([user for user in users if user not in holding])
        return holding

    def scan_outbox(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of a walk over the users with undelivered records: (next cursor,
        0 when the walk is complete; about `count` users)."""
        cursor, users = self.client.sscan(OUTBOX_INDEX, cursor, count=count)
        return int(cursor), [_text(u) for u in users]

    def ack(self, delivered: Mapping[str, Sequence[str]]) -> None:
        """Drop delivered records (exactly as read) from the head of each user's outbox."""
        users = list(delivered)

        def queue(pipe: Pipeline) -> None:
            for user_id in users:
                lua.call(pipe, self._ack, [RewardKeys.of(user_id).outbox], list(delivered[user_id]))

        self.unindex_outbox([u for u, left in zip(users, self._scripted(queue), strict=True) if int(left) == 0])

    def unindex_outbox(self, users: Sequence[str]) -> None:
        """Take these users, whose outboxes were seen empty, off the outbox index; those
        written meanwhile (the check comes after the removal) are indexed again."""
        if not users:
            return
        self.client.srem(OUTBOX_INDEX, *users)
        written = self._holding(users)
        if written:
            self.client.sadd(OUTBOX_INDEX, *written)

    def _holding(self, users: Collection[str]) -> set[str]:
        """Those of these users with undelivered records."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.llen(RewardKeys.of(user).outbox)
        return {user for user, waiting in zip(users, pipe.execute(), strict=True) if waiting}

    # --- points expiry index -------------------------------------------------

    def due_expiries(self, now_ms: int, limit: int) -> list[str]:
        return [_text(u) for u in self.client.zrangebyscore(EXPIRY_INDEX, "-inf", now_ms, start=0, num=limit)]

    def reindex_expiries(self, users: Sequence[str]) -> None:
        """After a sweep: drop the users' entries, then re-add each one's next expiry, if any."""
        if not users:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(EXPIRY_INDEX, *users)
        for user in users:
            pipe.zrangebyscore(RewardKeys.of(user).expiry, "-inf", "(+inf", start=0, num=1, withscores=True)
        nxt = {user: found[0][1] for user, found in zip(users, pipe.execute()[1:], strict=True) if found}
        for user, score in nxt.items():
            pipe.zadd(EXPIRY_INDEX, {user: score}, lt=True)
        if nxt:
            pipe.execute()


def _index(pipe: Pipeline, touches: Sequence[Touch]) -> None:
    """Queue the index writes that go before and after user-side writes (module docstring)."""
    users = list(dict.fromkeys(user for user, _ in touches))
    if not users:
        return
    pipe.sadd(USERS, *users)
    pipe.sadd(OUTBOX_INDEX, *users)
    for user, expiry_ms in touches:
        if expiry_ms is not None:
            pipe.zadd(EXPIRY_INDEX, {user: expiry_ms}, lt=True)


def _wallet(replies: Iterator[Any]) -> RawWallet:
    """The next five replies of a pipeline that queued a wallet read."""
    return RawWallet(*(_strs(next(replies)) for _ in range(5)))


def _reservation(reply: Sequence[Any]) -> Reservation:
    status = _text(reply[0])
    if status in ("ok", "held"):
        held = orjson.loads(reply[1])
        codes = held["codes"] or {}
        return Reservation(status, int(held["cost"]), {k: [_text(c) for c in v] for k, v in codes.items()})
    return Reservation(status, prize_id=_text(reply[1]) if len(reply) > 1 else None)


def _grant_reply(reply: Sequence[Any]) -> GrantReply:
    return _text(reply[0]), (_stored.decode(reply[1]) if len(reply) > 1 else None)


def _redeem_payload(op: RedeemOp) -> dict[str, str]:
    return {"dedupe": op.dedupe, "item": op.coupon,
            "detail": orjson.dumps(op.detail).decode() if op.detail is not None else "",
            "ok": encode(op.record).decode(),
            "fail": encode(op.rejected).decode() if op.rejected is not None else ""}


def _update_payload(dedupe: str, update: Update) -> bytes:
    return orjson.dumps({"dedupe": dedupe, "checks": update.checks, "hset": update.hset,
                         "zadd": update.zadd, "zrem": update.zrem, "push": update.push})


def _strs(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}
