"""The `[tiering]` section: RFM score tables, membership points and tiers, the
paid tier, lifecycle, AIPL and tag rules, and how often time decay and the
population snapshot run. Defaults live in pipeline/config/defaults/tiering.toml.

Checks that need another section (the F/M window must be one of
`state.windows_days`) are in `check_against(config)`.
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction
from typing import Annotated, Literal

import msgspec

from tierflow.pipeline.errors import ConfigError
from tierflow.schemas.events import InteractionKind

Mode = Literal["thresholds", "quantiles"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
# Four bounds separate the five scores 1..5.
BOUND_COUNT = 4


@functools.cache
def _cents(yuan: tuple[float, ...]) -> list[int]:
    """Exact cents of amounts written in yuan (cached: read on every evaluation)."""
    return [round(Fraction(str(y)) * 100) for y in yuan]


@functools.cache
def exact(value: float) -> Fraction:
    """A decimal written in the config as the exact fraction it denotes (0.1 -> 1/10)."""
    return Fraction(str(value))


def _ascending(path: str, values: list[int] | list[float]) -> None:
    if len(values) != BOUND_COUNT or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{path} must hold {BOUND_COUNT} strictly ascending values, got {values}")


class RecencyTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # "thresholds": the table below; "quantiles": population quintiles of the last purchase day.
    mode: Mode
    # Days since the last purchase, ascending: at most thresholds[0] days -> R=5,
    # at most thresholds[1] -> R=4, ... ; older than thresholds[3] -> R=1.
    thresholds: list[Annotated[int, msgspec.Meta(ge=0)]]

    def __post_init__(self) -> None:
        _ascending("tiering.recency.thresholds", self.thresholds)


class FrequencyTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    mode: Mode
    # Purchases in the window, ascending minimums for F=2, 3, 4, 5; fewer -> F=1.
    thresholds: list[Annotated[int, msgspec.Meta(ge=1)]]

    def __post_init__(self) -> None:
        _ascending("tiering.frequency.thresholds", self.thresholds)


class MonetaryTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    mode: Mode
    # Spend in the window (yuan), ascending minimums for M=2, 3, 4, 5; less -> M=1.
    thresholds: list[Annotated[float, msgspec.Meta(gt=0)]]

    def __post_init__(self) -> None:
        _ascending("tiering.monetary.thresholds", self.thresholds)

    @property
    def thresholds_cents(self) -> list[int]:
        return _cents(tuple(self.thresholds))


class PointsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Points per yuan of lifetime spend (fractions allowed; the total is rounded down).
    per_yuan: Annotated[float, msgspec.Meta(ge=0)]
    # Points per browse event and per add-to-cart.
    per_browse: Annotated[int, msgspec.Meta(ge=0)]
    per_cart_add: Annotated[int, msgspec.Meta(ge=0)]
    # Points per interaction of each kind; kinds not listed earn nothing.
    per_interaction: dict[InteractionKind, Annotated[int, msgspec.Meta(ge=0)]]


class TierRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Name
    min_points: Annotated[int, msgspec.Meta(ge=0)]


class PriceRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    min_points: Annotated[int, msgspec.Meta(ge=0)]
    # Yuan.
    price: Annotated[float, msgspec.Meta(ge=0)]


def _points_ladder(path: str, mins: list[int]) -> None:
    if not mins or mins[0] != 0 or any(b <= a for a, b in itertools.pairwise(mins)):
        raise ValueError(
            f"{path}: min_points must start at 0 and be strictly ascending, got {mins}"
        )


class PaidTierConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Tier name while the paid membership is active (it outranks the points tiers).
    name: Name
    # Buying this SKU activates the paid tier; qty n buys n consecutive terms.
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    term_days: Annotated[int, msgspec.Meta(ge=1)]
    # Offer price by points score: the rule with the highest min_points reached applies.
    prices: list[PriceRule]

    def __post_init__(self) -> None:
        _points_ladder("tiering.membership.paid.prices", [p.min_points for p in self.prices])


class MembershipConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Points tiers, ascending: a member holds the highest tier whose min_points they reach.
    tiers: list[TierRule]
    paid: PaidTierConfig

    def __post_init__(self) -> None:
        _points_ladder("tiering.membership.tiers", [t.min_points for t in self.tiers])
        names = [t.name for t in self.tiers] + [self.paid.name]
        if len(set(names)) != len(names):
            raise ValueError(f"tiering.membership: tier names must be unique, got {names}")


class LifecycleConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # vip: at least this many repurchases AND this lifetime spend (yuan) ...
    vip_min_repurchases: Annotated[int, msgspec.Meta(ge=1)]
    vip_min_spend: Annotated[float, msgspec.Meta(ge=0)]
    # ... or, having bought at least once, while holding one of these membership tiers.
    vip_tiers: list[Name]

    @property
    def vip_min_spend_cents(self) -> int:
        return _cents((self.vip_min_spend,))[0]


class AiplConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Interest: any add-to-cart, or an interaction of one of these kinds.
    interest_kinds: list[InteractionKind]
    # Loyalty: at least this many purchases, or a buyer who advocates (one of these kinds).
    loyalty_min_purchases: Annotated[int, msgspec.Meta(ge=2)]
    advocacy_kinds: list[InteractionKind]


class TagsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # At most this many `<sku><n>` tags, the most ordered SKUs first.
    max_sku_tags: Annotated[int, msgspec.Meta(ge=0)]
    # `fav_category:<c>` when one category holds at least this share of lifetime spend.
    favourite_category_min_share: Share
    # `weekend_buyer` when at least this share of purchases fell on Sat/Sun, else `weekday_buyer`.
    weekend_min_share: Share
    # `prefers_coupons` / `prefers_gifts`: whichever family of interactions is more frequent.
    coupon_kinds: list[InteractionKind]
    gift_kinds: list[InteractionKind]


class DecayConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # The timer looks for users whose next boundary passed this often ...
    timer_interval_ms: Annotated[int, msgspec.Meta(ge=10)]
    # ... and re-evaluates at most this many per tick: the slice of time-based work
    # (also the members a tick's means-shift sweep slice examines).
    due_batch: Annotated[int, msgspec.Meta(ge=1)]


class PopulationConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Means (and quantile cut points) are snapshotted this often; users whose high/low
    # or quantile score flips are then re-evaluated (reason means_shift).
    snapshot_interval_ms: Annotated[int, msgspec.Meta(ge=100)]
    # Population keys are split over this many hash tags (Redis Cluster slots).
    # Fixed for the life of a deployment: the population keys are placed by it.
    shards: Annotated[int, msgspec.Meta(ge=1, le=1024)]


class DowngradeConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Days a downgrade (to a lower membership tier, or a worse RFM segment) is held before it
    # is published; a recovery within them cancels it. 0: published at once.
    membership_grace_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    segment_grace_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A `will_downgrade` notice goes out this many days before a held downgrade takes
    # effect (at once if the grace is shorter); 0: no notice.
    notice_days: Annotated[int, msgspec.Meta(ge=0)] = 0

    def grace_days(self, dimension: str) -> int:
        return {"membership": self.membership_grace_days, "segment": self.segment_grace_days}.get(dimension, 0)


class TieringConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Rolling window (days) behind F and M; must be one of state.windows_days.
    window_days: Annotated[int, msgspec.Meta(ge=1)]
    recency: RecencyTable
    frequency: FrequencyTable
    monetary: MonetaryTable
    points: PointsConfig
    membership: MembershipConfig
    lifecycle: LifecycleConfig
    aipl: AiplConfig
    tags: TagsConfig
    decay: DecayConfig
    population: PopulationConfig
    downgrade: DowngradeConfig = msgspec.field(default_factory=DowngradeConfig)

    def __post_init__(self) -> None:
        known = {t.name for t in self.membership.tiers} | {self.membership.paid.name}
        unknown = sorted(set(self.lifecycle.vip_tiers) - known)
        if unknown:
            raise ValueError(f"tiering.lifecycle.vip_tiers: unknown tiers {unknown}")

    @property
    def window_key(self) -> str:
        """The Summary key of the F/M window, e.g. "30d"."""
        return f"{self.window_days}d"

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.membership.tiers] + [self.membership.paid.name]


def check_against(windows_days: list[int], tiering: TieringConfig) -> None:
    """Cross-section check: the F/M window must be kept by the state store."""
    if tiering.window_days not in windows_days:
        raise ConfigError(
            f"tiering.window_days = {tiering.window_days} is not one of "
            f"state.windows_days {windows_days}"
        )
