"""CSV exports of the dashboard's panels: each panel's JSON document as rows
(a header first), plain functions over the documents the JSON endpoints serve."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

Rows = list[list[object]]

STAGES = ("awareness", "interest", "purchase", "loyalty")
RATES = ("a_to_i", "i_to_p", "p_to_l")
SALES = ("orders", "revenue_cents", "aov_cents")


def to_csv(rows: Rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(
        ["" if v is None else v for v in row] for row in rows
    )
    return out.getvalue()


def _funnel(doc: Mapping[str, Any]) -> list[object]:
    return [*(doc[s] for s in STAGES), *(doc["rates"][r] for r in RATES)]


def funnel_rows(doc: Mapping[str, Any]) -> Rows:
    return [[*STAGES, *RATES], _funnel(doc)]


def group_rows(doc: Mapping[str, Mapping[str, Any]]) -> Rows:
    return [["group", *STAGES, *RATES], *([name, *_funnel(f)] for name, f in doc.items())]


def trend_rows(doc: Mapping[str, Any]) -> Rows:
    return [["week", *STAGES, *RATES, "partial"],
            *([w["week"], *_funnel(w), w.get("partial", False)] for w in doc["weeks"])]


def sales_rows(doc: Mapping[str, Any]) -> Rows:
    """The period, the one before, the change between them, each domain and each week."""
    rows: Rows = [["scope", "from", "to", *SALES, "partial"]]
    if doc["from"] is None:
        return rows
    before = doc["previous"]
    rows.append(["period", doc["from"], doc["to"], *(doc[k] for k in SALES), doc["partial"]])
    rows.append(["previous period", before["from"], before["to"], *(before[k] for k in SALES), False])
    rows.append(["change", "", "", *(doc["change"][k] for k in SALES), doc["partial"]])
    rows.extend([f"domain {name}", doc["from"], doc["to"], *(s[k] for k in SALES), doc["partial"]]
                for name, s in doc["domains"].items())
    rows.extend(["week", w["week"], "", *(w[k] for k in SALES), w["partial"]] for w in doc["weeks"])
    return rows


def tier_rows(doc: Mapping[str, Any]) -> Rows:
    return [["dimension", "value", "users"],
            *([dim, value, users] for dim, values in doc["dimensions"].items()
              for value, users in values.items())]


def tier_domain_rows(doc: Mapping[str, Any]) -> Rows:
    reaches = ("public", "private", "both", "none")
    return [["dimension", "value", *reaches],
            *([doc["dimension"], value, *(split[r] for r in reaches)]
              for value, split in doc["values"].items())]


def migration_rows(doc: Mapping[str, Any]) -> Rows:
    return [["dimension", "from_value", "to_value", "users"],
            *([doc["dimension"], f["from"], f["to"], f["users"]] for f in doc["flows"])]


REWARD_COLUMNS = ("campaign", "budget_cents", "spent_cents", "grants", "cancellations", "redemptions",
                  "discount_cents", "redeemed_order_cents", "points_granted")


def reward_rows(doc: Mapping[str, Any]) -> Rows:
    return [["from", "to", *REWARD_COLUMNS],
            *([doc.get("from"), doc.get("to"), *(c[k] for k in REWARD_COLUMNS)] for c in doc["campaigns"])]


def uplift_rows(doc: Mapping[str, Any]) -> Rows:
    """One row per campaign and arm, with the campaign's uplift and interval on each."""
    rows: list[list[object]] = [["campaign", "days", "arm", "customers", "buyers", "purchase_rate",
                                 "revenue_per_customer_cents", "purchase_rate_uplift", "rate_low", "rate_high",
                                 "revenue_uplift_cents", "revenue_low", "revenue_high"]]
    for c in doc["campaigns"]:
        rate = c["purchase_rate_uplift"] or {}
        revenue = c["revenue_per_customer_uplift_cents"] or {}
        for arm in ("treated", "control"):
            a = c[arm]
            rows.append([c["campaign"], doc["days"], arm, a["customers"], a["buyers"], a["purchase_rate"],
                         a["revenue_per_customer_cents"], rate.get("difference"), rate.get("low"), rate.get("high"),
                         revenue.get("difference"), revenue.get("low"), revenue.get("high")])
    return rows
