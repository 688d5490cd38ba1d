"""The JSON Schema files beside this module, generated from the msgspec types, so
the Python records and the cross-language contract cannot drift apart.

Each file is `msgspec.json.schema` of its type, with the type's docstring and
field descriptions, plus: `$schema`/`$id`, the file's title, a type published in
a file of its own referenced by that file (batch.json -> touch.*.json) rather
than repeated, and `additionalProperties: true` on every record whose type
tolerates unknown fields (the forward-compatibility promise, stated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, get_args

import msgspec

from tierflow.schemas.dead_letters import DeadLetter
from tierflow.schemas.erasures import Erasure
from tierflow.schemas.events import BROWSE_NAMES_WHAT, Batch, Browse, Cart, Interaction, Purchase, Refund
from tierflow.schemas.reward_grants import RewardRecord
from tierflow.schemas.tier_changes import TierChange

DIRECTORY = Path(__file__).resolve().parent
DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://tierflow.dev/schemas/"

# File name -> its record type, titled (and with what a type cannot state). The
# names are public: docs and producers reference them.
CONTRACTS: dict[str, Any] = {
    "touch.purchase.json": Annotated[Purchase, msgspec.Meta(title="Purchase event")],
    "refund.json": Annotated[Refund, msgspec.Meta(title="Refund event (on touch.purchase)")],
    "touch.cart.json": Annotated[Cart, msgspec.Meta(title="Cart event")],
    "touch.browse.json": Annotated[Browse, msgspec.Meta(title="Browse event", extra_json_schema=BROWSE_NAMES_WHAT)],
    "touch.interaction.json": Annotated[Interaction, msgspec.Meta(title="Interaction event")],
    "batch.json": Annotated[Batch, msgspec.Meta(title="Batch of one user's events")],
    "touch.dlq.json": Annotated[DeadLetter, msgspec.Meta(title="Dead-letter record")],
    "tier.changes.json": Annotated[TierChange, msgspec.Meta(title="Tier change")],
    "reward.grants.json": Annotated[RewardRecord, msgspec.Meta(title="Reward record")],
    "tierflow.erasures.json": Annotated[Erasure, msgspec.Meta(title="Erasure record")],
}
# Each event type's contract file: named after its topic, except the refund's, which
# shares touch.purchase with the purchase.
EVENT_FILES = {"purchase": "touch.purchase.json", "refund": "refund.json", "cart": "touch.cart.json",
               "browse": "touch.browse.json", "interaction": "touch.interaction.json"}
# The names reward.grants.json first published its definitions under: a reference
# such as reward.grants.json#/$defs/item keeps working.
DEF_NAMES = {"RewardItem": "item", "CouponTerms": "terms", "Fulfilment": "fulfilment"}


def _type_name(published: Any) -> str:
    return get_args(published)[0].__name__


def _rewrite(node: Any, refs: dict[str, str]) -> Any:
    """References renamed or pointed at other files; descriptions on one line (docstrings
    wrap); open records marked open."""
    if isinstance(node, list):
        return [_rewrite(item, refs) for item in node]
    if isinstance(node, str):
        return refs.get(node, node)
    if not isinstance(node, dict):
        return node
    out = {key: _rewrite(value, refs) for key, value in node.items()}
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split())
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", True)
    return out


def _used(node: Any, defs: dict[str, Any]) -> set[str]:
    """The definitions `node` references, directly or through other definitions."""
    found: set[str] = set()
    todo = [node]
    while todo:
        text = json.dumps(todo.pop())
        for def_name, body in defs.items():
            if def_name not in found and f'"#/$defs/{def_name}"' in text:
                found.add(def_name)
                todo.append(body)
    return found


def document(name: str) -> dict[str, Any]:
    """The JSON Schema of one contract file."""
    schema = msgspec.json.schema(CONTRACTS[name])
    defs: dict[str, Any] = schema.pop("$defs")
    root = {**defs.pop(schema.pop("$ref").rsplit("/", 1)[1]), **schema}
    elsewhere = {_type_name(t): file for file, t in CONTRACTS.items() if file != name}
    refs = {f"#/$defs/{old}": f"#/$defs/{DEF_NAMES.get(old, old)}" for old in defs}
    refs.update({f"#/$defs/{old}": file for old, file in elsewhere.items() if old in defs})
    root = _rewrite(root, refs)
    defs = {DEF_NAMES.get(old, old): _rewrite(body, refs) for old, body in defs.items() if old not in elsewhere}
    used = _used(root, defs)
    kept = {def_name: body for def_name, body in defs.items() if def_name in used}
    return {"$schema": DRAFT, "$id": BASE_URI + name, **root, **({"$defs": kept} if kept else {})}


def render(name: str) -> str:
    return json.dumps(document(name), indent=2, ensure_ascii=False) + "\n"


def stale(directory: Path) -> list[str]:
    """The contract files that are missing or differ from what the types generate."""
    return [
        name for name in CONTRACTS
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != render(name)
    ]


def write(directory: Path) -> list[str]:
    """Regenerate the stale files; returns their names."""
    names = stale(directory)
    for name in names:
        (directory / name).write_text(render(name), encoding="utf-8")
    return names
