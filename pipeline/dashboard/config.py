"""The `[dashboard]` section: how the page refreshes, which SKUs are not products,
and which channels are public or private domain. Defaults live in
pipeline/config/defaults/dashboard.toml."""

from __future__ import annotations

from typing import Annotated

import msgspec

PUBLIC, PRIVATE = "public", "private"


class DashboardConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # How often an open page re-fetches its panels; paused while its tab is hidden.
    refresh_s: Annotated[float, msgspec.Meta(ge=1)]
    # SKUs that are services or fees, not products: kept out of the product categories
    # (the paid membership's SKU, [tiering.membership.paid] sku, always is).
    non_product_skus: list[str]
    # Channel -> domain: public = marketplaces the brand sells on, private = channels it owns.
    public_channels: list[str]
    private_channels: list[str]
    # The domain of a channel in neither list.
    other_domain: str

    def __post_init__(self) -> None:
        both = set(self.public_channels) & set(self.private_channels)
        if both:
            raise ValueError(f"channels both public and private: {', '.join(sorted(both))}")

    def channel_map(self) -> tuple[list[str], list[str]]:
        """Channels and their domains, as two parallel lists (SQL transform() arguments)."""
        channels = [*self.public_channels, *self.private_channels]
        domains = [PUBLIC] * len(self.public_channels) + [PRIVATE] * len(self.private_channels)
        return channels, domains
