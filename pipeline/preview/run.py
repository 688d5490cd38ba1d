"""A preview of a new configuration over the current state in Redis. It only reads: no key
is written, nothing is published.

It reproduces what `tierflow reevaluate` does under the new configuration (see
TierStore.reevaluate_all): every customer evaluated against the stored population
snapshot, then a new snapshot taken from the resulting scores, then the customers that
snapshot moves evaluated again. Scores do not depend on the means, so the second
snapshot is known once every customer's scores are: pass 1 tallies them (and the raw
values, for quantile cut points), pass 2 evaluates everyone against both snapshots. The
moves compare the tiers stored now with the second evaluation; the change records (and
the rewards they trigger) are those the re-evaluation publishes: stored -> first, then
first -> second where the new snapshot moves a customer again. Both passes stream the customers in chunks, so memory
stays bounded by a chunk (plus the raw values of a dimension scored by quantiles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tierflow.pipeline.config.domain import Config
from tierflow.pipeline.lua import Redis
from tierflow.pipeline.preview.moves import Budget, Moves, change_of
from tierflow.pipeline.rewards.ledger import RewardKeys
from tierflow.pipeline.state.store import StateStore
from tierflow.pipeline.state.summary import AsOfOutOfRange, RawState, iso, summarize
from tierflow.pipeline.tiering.config import check_against
from tierflow.pipeline.tiering.evaluate import TRACKED, Evaluation, evaluate
from tierflow.pipeline.tiering.keys import TierKeys
from tierflow.pipeline.tiering.membership import PaidPurchase
from tierflow.pipeline.tiering.rfm import DIMENSIONS, SCORES, Population, quantile_cuts
from tierflow.pipeline.tiering.store import chunks


@dataclass(frozen=True)
class Customer:
    """What the evaluation of one customer reads."""

    raw: RawState
    tier: dict[str, str]  # the stored tiers ({u:ID}:tier)
    paid: list[PaidPurchase]
    granted: dict[str, int]  # grants so far per reward rule


@dataclass
class Preview:
    users: int = 0  # customers with state, evaluated
    as_of_ms: int = 0
    changes: int = 0  # tier.changes records the re-evaluation would publish
    moves: Moves = field(default_factory=Moves)
    budget: Budget = field(default_factory=Budget)


def load(client: Redis, users: list[str], retention_days: int) -> dict[str, Customer]:
    """The customers with state among `users`, in two round trips."""
    states = StateStore(client, retention_days).read_many(users)
    pipe = client.pipeline(transaction=False)
    for user in users:
        keys = TierKeys.of(user)
        pipe.hgetall(keys.tier)
        pipe.hgetall(keys.paid)
        pipe.hgetall(RewardKeys.of(user).counts)
    replies = pipe.execute()
    out: dict[str, Customer] = {}
    for i, user in enumerate(users):
        raw = states[user]
        if raw is None:
            continue
        tier, paid, granted = replies[3 * i: 3 * i + 3]
        orders = [PaidPurchase(*(int(part) for part in value.split(":"))) for value in paid.values()]
        out[user] = Customer(raw, tier, orders, {rule: int(n) for rule, n in granted.items()})
    return out


def evaluate_customer(config: Config, user: str, customer: Customer, population: Population,
                      now_ms: int) -> Evaluation:
    """As the tier store evaluates: as of now or the stored instant, whichever is later, or as
    of the newest event when the clock is behind the retained history."""
    as_of = max(now_ms, int(customer.tier.get("asof", "-1")))
    try:
        return _evaluate(config, user, customer, population, as_of)
    except AsOfOutOfRange:
        return _evaluate(config, user, customer, population, max(as_of, int(customer.raw.profile["ls"])))


def _evaluate(config: Config, user: str, customer: Customer, population: Population, as_of: int) -> Evaluation:
    summary = summarize(user, customer.raw, as_of, config.state.windows_days, config.state.retention_days)
    days = [int(k[1:]) for k in customer.raw.days if k.startswith("c")]
    return evaluate(summary, population, config.tiering, as_of, paid_purchases=customer.paid, purchase_days=days)


def quantile_dimensions(config: Config) -> list[str]:
    modes = {"r": config.tiering.recency.mode, "f": config.tiering.frequency.mode, "m": config.tiering.monetary.mode}
    return [dim for dim in DIMENSIONS if modes[dim] == "quantiles"]


class Previewer:
    def __init__(self, client: Redis, config: Config) -> None:
        """`config`: the new configuration. Raises ConfigError when it does not hold together."""
        check_against(config.state.windows_days, config.tiering)
        self.client = client
        self.config = config

    def run(self, users: Callable[[], Iterable[str]], snapshot: Population, now_ms: int,
            show: Callable[[int, int], None]) -> Preview:
        """`users()` streams the customers (called once per pass); `snapshot`: the stored
        population snapshot; `show(pass, done)` reports progress."""
        size = self.config.tiering.decay.due_batch
        scored = {dim: [0] * len(SCORES) for dim in DIMENSIONS}
        raw: dict[str, list[int]] = {dim: [] for dim in quantile_dimensions(self.config)}
        done = 0
        for chunk in chunks(users(), size):
            for user, customer in self._load(chunk).items():
                first = evaluate_customer(self.config, user, customer, snapshot, now_ms)
                if first.scores is not None:
                    for dim in DIMENSIONS:
                        scored[dim][getattr(first.scores, dim) - 1] += 1
                if first.raw is not None:
                    for dim, values in raw.items():
                        values.append(first.raw.of(dim))
            done += len(chunk)
            show(1, done)
        cuts = {dim: c for dim, values in raw.items() if (c := quantile_cuts(values)) is not None}
        population = Population(counts=scored, cuts=cuts)

        preview = Preview(as_of_ms=now_ms)
        done = 0
        for chunk in chunks(users(), size):
            for user, customer in self._load(chunk).items():
                first = evaluate_customer(self.config, user, customer, snapshot, now_ms)
                second = evaluate_customer(self.config, user, customer, population, now_ms)
                self._compare(preview, user, customer, first, second)
            done += len(chunk)
            show(2, done)
        return preview

    def _load(self, users: list[str]) -> dict[str, Customer]:
        return load(self.client, users, self.config.state.retention_days)

    def _compare(self, preview: Preview, user: str, customer: Customer, first: Evaluation,
                 second: Evaluation) -> None:
        preview.users += 1
        granted = dict(customer.granted)
        versions = {dim: int(customer.tier.get(f"n:{dim}", "0")) for dim in TRACKED}
        stored = {dim: customer.tier.get(f"v:{dim}") for dim in TRACKED}
        for dim in TRACKED:
            preview.moves.add(dim, stored[dim], second.value(dim))
        # The re-evaluation's records, in its order: everyone first, then the sweep.
        for before, after in ((stored, first), (first.values(), second)):
            for dim in TRACKED:
                old, new = before[dim], after.value(dim)
                if old == new:
                    continue
                versions[dim] += 1
                preview.changes += 1
                change = change_of(user, dim, old, new, versions[dim], after, iso(after.as_of_ms))
                preview.budget.add(self.config.rewards, change, granted)
