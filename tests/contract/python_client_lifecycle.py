"""The key lifecycle through a client generated from GET /openapi.json.

Run by tests/contract/python_client.sh, which generates the package
`keyledger_client` with openapi-python-client, puts it on PYTHONPATH and
starts the server. Usage: python3 python_client_lifecycle.py BASE_URL TOKEN

Every call goes through the generated functions and models only. The generated
parsers are lenient (they cast what they cannot parse), so each answer is also
checked against the annotations of the generated models: every field of the
type the document declares (a date-time parsed, a nested object its model, a
union one of its arms), and no field the document does not name. A document
that does not describe what the server sends fails here.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import secrets
import sys
import traceback
import types
import typing

import attrs
import httpx
from keyledger_client import AuthenticatedClient, Client
from keyledger_client import models as M
from keyledger_client.api.audit import list_audit_events, list_key_events
from keyledger_client.api.keys import (
    create_key,
    deactivate_key,
    delete_key,
    get_key,
    import_keys,
    list_keys,
    reactivate_key,
    rotate_key,
    update_key,
)
from keyledger_client.api.verification import verify_key
from keyledger_client.types import Response, Unset

# The server runs with `--import-prefix ext_` (python_client.sh).
IMPORT_PREFIX = "ext_live_"
# The addresses the lifecycle's key is limited to (`allowed_ips`), as sent and
# as the server answers them (canonical: a single address as /128), and one
# client address inside them and one outside.
ALLOWED_IPS = ["192.0.2.0/24", "2001:db8::1"]
CANONICAL_IPS = ["192.0.2.0/24", "2001:db8::1/128"]
INSIDE, OUTSIDE = "192.0.2.7", "198.51.100.1"


class Mismatch(Exception):
    """An answer that is not what the document (or the contract) says."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


# ---------------------------------------------------------------------------
# An answer against the generated models' annotations.

_MODEL_NAMES = {name: getattr(M, name) for name in dir(M) if not name.startswith("_")}


def _hints(cls: type) -> dict[str, typing.Any]:
    module = sys.modules[cls.__module__]
    local = dict(_MODEL_NAMES)
    local.update({"Unset": Unset, "datetime": datetime, "Any": typing.Any})
    return typing.get_type_hints(cls, globalns=vars(module), localns=local)


def conforms(value: object, hint: object, path: str) -> None:
    """Raises Mismatch unless `value` is of the annotated type `hint`."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                conforms(value, arm, path)
                return
            except Mismatch:
                continue
        raise Mismatch(f"{path}: {value!r} is none of {hint}")
    if hint is type(None):
        expect(value is None, f"{path}: {value!r} is not null")
    elif origin is list:
        expect(isinstance(value, list), f"{path}: {value!r} is not an array")
        (item,) = typing.get_args(hint)
        for i, element in enumerate(typing.cast(list, value)):
            conforms(element, item, f"{path}[{i}]")
    elif origin is dict:
        expect(isinstance(value, dict), f"{path}: {value!r} is not an object")
    elif hint is bool:
        expect(isinstance(value, bool), f"{path}: {value!r} is not a boolean")
    elif hint is int:
        expect(
            isinstance(value, int) and not isinstance(value, bool),
            f"{path}: {value!r} is not an integer",
        )
    elif hint is float:
        expect(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"{path}: {value!r} is not a number",
        )
    elif hint is str:
        expect(isinstance(value, str), f"{path}: {value!r} is not a string")
    elif hint is datetime.datetime:
        expect(
            isinstance(value, datetime.datetime) and value.tzinfo is not None,
            f"{path}: {value!r} is not a date-time with an offset",
        )
    elif isinstance(hint, type) and attrs.has(hint):
        expect(isinstance(value, hint), f"{path}: {value!r} is not a {hint.__name__}")
        conforms_model(value, path)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        expect(isinstance(value, hint), f"{path}: {value!r} is not one of {hint.__name__}")
    elif isinstance(hint, type):
        expect(isinstance(value, hint), f"{path}: {value!r} is not a {hint.__name__}")
    else:
        raise Mismatch(f"{path}: no check for the annotation {hint!r}")


def conforms_model(model: object, path: str) -> None:
    """Every declared field of its type; no undeclared field (but in free-form objects)."""
    cls = type(model)
    declared = [f for f in attrs.fields(cls) if f.name != "additional_properties"]
    extra = getattr(model, "additional_properties", {})
    expect(
        not declared or not extra,
        f"{path} ({cls.__name__}): fields the document does not declare: {sorted(extra)}",
    )
    hints = _hints(cls)
    for f in declared:
        conforms(getattr(model, f.name), hints[f.name], f"{path}.{f.name}")


T = typing.TypeVar("T")


def answer(response: Response[typing.Any], status: int, model: type[T], what: str) -> T:
    """The parsed answer of `what`, which must have `status` and be a conforming `model`."""
    expect(
        response.status_code == status,
        f"{what}: status {int(response.status_code)}, expected {status}: {response.content[:500]!r}",
    )
    parsed = response.parsed
    expect(
        isinstance(parsed, model),
        f"{what}: parsed as {type(parsed).__name__}, expected {model.__name__}: {response.content[:500]!r}",
    )
    conforms_model(parsed, what)
    return typing.cast(T, parsed)


# ---------------------------------------------------------------------------
# The lifecycle.

STEPS: list[str] = []


def step(name: str) -> None:
    STEPS.append(name)
    print(f"  {name}", flush=True)


def verify(client: Client, raw: str, what: str, **extra: typing.Any) -> M.VerificationView:
    return answer(
        verify_key.sync_detailed(client=client, body=M.VerifyBody(key=raw, **extra)),
        200,
        M.VerificationView,
        what,
    )


def run(base_url: str, token: str) -> None:
    # An answer the document does not list (status code) raises; no call waits long.
    timeout = httpx.Timeout(10.0)
    admin = AuthenticatedClient(
        base_url=base_url, token=token, raise_on_unexpected_status=True, timeout=timeout
    )
    # Verification needs no credential: the generated plain client.
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True, timeout=timeout)

    step("createKey: 201, the raw key once")
    body = M.CreateKeyRequest(
        name="python client",
        description="made by the generated client",
        permissions=["keys:read", "keys:write"],
        metadata=M.CreateKeyRequestMetadataType0.from_dict({"team": "contract", "n": 1}),
    )
    idempotency = "python-client-" + secrets.token_hex(8)
    created = answer(
        create_key.sync_detailed(client=admin, body=body, idempotency_key=idempotency),
        201,
        M.KeyCreatedView,
        "createKey",
    )
    raw = created.key
    key_id = created.id
    expect(raw.startswith("kl_live_"), f"raw key {raw[:12]}... is not a live keyledger key")
    expect(
        raw.startswith(created.prefix), f"raw key does not start with its prefix {created.prefix}"
    )
    expect(key_id.startswith("key_"), f"id {key_id}")
    expect(created.name == "python client", f"name {created.name!r}")
    expect(created.status == "active", f"status {created.status!r}")
    expect(created.environment == "live", f"environment {created.environment!r}")
    expect(created.permissions == ["keys:read", "keys:write"], f"permissions {created.permissions}")
    expect(created.imported is False, "a created key is not imported")
    expect(created.usage_count == 0, f"usage_count {created.usage_count}")
    expect(created.allowed_ips == [], f"allowed_ips {created.allowed_ips}")
    expect(
        isinstance(created.metadata, M.KeyViewMetadataType0)
        and created.metadata.to_dict() == {"team": "contract", "n": 1},
        f"metadata {created.metadata!r}",
    )
    expect(created.created_by == "python-client", f"created_by {created.created_by!r}")

    step("createKey again with the same Idempotency-Key: the first answer")
    again = answer(
        create_key.sync_detailed(client=admin, body=body, idempotency_key=idempotency),
        201,
        M.KeyCreatedView,
        "createKey (retry)",
    )
    expect(again.id == key_id and again.key == raw, "a retry issued another key")

    step("listKeys: the key is listed, without its raw key")
    listed = answer(list_keys.sync_detailed(client=admin, limit=100), 200, M.KeyList, "listKeys")
    mine = [k for k in listed.keys if k.id == key_id]
    expect(len(mine) == 1, f"{key_id} listed {len(mine)} times")
    expect(
        isinstance(mine[0], M.KeyView) and not isinstance(mine[0], M.KeyCreatedView),
        "list item type",
    )
    expect(isinstance(listed.next_cursor, (str, type(None))), "next_cursor")
    expect(raw not in repr(listed.to_dict()), "the raw key is listed")
    active = answer(
        list_keys.sync_detailed(client=admin, status="active", environment="live", limit=1),
        200,
        M.KeyList,
        "listKeys (filtered)",
    )
    expect(len(active.keys) == 1, f"limit=1 answered {len(active.keys)} keys")

    step("getKey: by id and by display prefix")
    got = answer(get_key.sync_detailed(key_id, client=admin), 200, M.KeyView, "getKey")
    expect(
        got.id == key_id and got.name == "python client", f"getKey answered {got.id} {got.name!r}"
    )
    expect("key" not in got.additional_properties, "getKey shows the raw key")
    by_prefix = answer(
        get_key.sync_detailed(created.prefix, client=admin), 200, M.KeyView, "getKey (prefix)"
    )
    expect(by_prefix.id == key_id, f"the prefix names {by_prefix.id}")

    step("updateKey: a new name and client addresses, the rest kept")
    updated = answer(
        update_key.sync_detailed(
            key_id,
            client=admin,
            body=M.UpdateKeyRequest(name="python client, renamed", allowed_ips=ALLOWED_IPS),
        ),
        200,
        M.KeyView,
        "updateKey",
    )
    expect(updated.name == "python client, renamed", f"name {updated.name!r}")
    expect(sorted(updated.allowed_ips) == CANONICAL_IPS, f"allowed_ips {updated.allowed_ips}")
    expect(
        updated.description == "made by the generated client",
        f"description {updated.description!r}",
    )
    expect(updated.permissions == ["keys:read", "keys:write"], f"permissions {updated.permissions}")
    expect(updated.updated_at >= created.updated_at, "updated_at went back")

    step("verifyKey: VALID from inside the key's addresses, IP_NOT_ALLOWED from outside")
    valid = verify(
        anonymous, raw, "verifyKey", permissions=["keys:read"], environment="live", ip=INSIDE
    )
    expect(valid.valid is True and valid.code == "VALID", f"{valid.valid} {valid.code}")
    expect(valid.key_id == key_id, f"key_id {valid.key_id}")
    expect(valid.tenant == "contract", f"tenant {valid.tenant!r}")
    expect(valid.name == "python client, renamed", f"name {valid.name!r}")
    expect(valid.environment == "live", f"environment {valid.environment!r}")
    expect(valid.permissions == ["keys:read", "keys:write"], f"permissions {valid.permissions}")
    expect(valid.expires_at is None, f"expires_at {valid.expires_at!r}")
    outside = verify(anonymous, raw, "verifyKey (outside)", ip=OUTSIDE)
    expect(
        outside.valid is False and outside.code == "IP_NOT_ALLOWED",
        f"{outside.valid} {outside.code}",
    )
    denied = verify(anonymous, raw, "verifyKey (permission)", permissions=["admin"], ip=INSIDE)
    expect(
        denied.valid is False and denied.code == "INSUFFICIENT_PERMISSIONS",
        f"{denied.valid} {denied.code}",
    )

    step("deactivateKey: inactive, then verifyKey DISABLED")
    inactive = answer(
        deactivate_key.sync_detailed(
            key_id, client=admin, body=M.DeactivateRequest(reason="contract test")
        ),
        200,
        M.KeyView,
        "deactivateKey",
    )
    expect(inactive.status == "inactive", f"status {inactive.status!r}")
    disabled = verify(anonymous, raw, "verifyKey (deactivated)", ip=INSIDE)
    expect(
        disabled.valid is False and disabled.code == "DISABLED", f"{disabled.valid} {disabled.code}"
    )
    expect(disabled.key_id == key_id, f"key_id {disabled.key_id}")

    step("reactivateKey: active, then verifyKey VALID")
    reactivated = answer(
        reactivate_key.sync_detailed(key_id, client=admin), 200, M.KeyView, "reactivateKey"
    )
    expect(reactivated.status == "active", f"status {reactivated.status!r}")
    back = verify(anonymous, raw, "verifyKey (reactivated)", ip=INSIDE)
    expect(back.valid is True and back.code == "VALID", f"{back.valid} {back.code}")

    step("rotateKey: a successor with its own raw key, then verifyKey VALID on it")
    successor = answer(
        rotate_key.sync_detailed(
            key_id, client=admin, body=M.RotateRequest(grace_period_seconds=600)
        ),
        201,
        M.KeyCreatedView,
        "rotateKey",
    )
    new_raw = successor.key
    new_id = successor.id
    expect(new_id != key_id and new_raw != raw, "the successor is the old key")
    expect(
        new_raw.startswith(successor.prefix),
        "the successor's raw key does not start with its prefix",
    )
    expect(successor.rotated_from == key_id, f"rotated_from {successor.rotated_from!r}")
    expect(successor.name == "python client, renamed", f"name {successor.name!r}")
    expect(
        successor.permissions == ["keys:read", "keys:write"], f"permissions {successor.permissions}"
    )
    expect(sorted(successor.allowed_ips) == CANONICAL_IPS, f"allowed_ips {successor.allowed_ips}")
    fresh = verify(anonymous, new_raw, "verifyKey (successor)", ip=INSIDE)
    expect(
        fresh.valid is True and fresh.code == "VALID" and fresh.key_id == new_id,
        f"{fresh.code} {fresh.key_id}",
    )
    old = answer(get_key.sync_detailed(key_id, client=admin), 200, M.KeyView, "getKey (rotated)")
    expect(old.rotated_to == new_id, f"rotated_to {old.rotated_to!r}")
    expect(isinstance(old.expires_at, datetime.datetime), f"expires_at {old.expires_at!r}")
    grace = verify(anonymous, raw, "verifyKey (old key in its grace period)", ip=INSIDE)
    expect(grace.code == "VALID", f"the old key answers {grace.code} in its grace period")
    twice = answer(
        rotate_key.sync_detailed(key_id, client=admin), 409, M.ErrorBody, "rotateKey (again)"
    )
    expect(twice.error.code == "conflict", f"a second rotation answered {twice.error.code}")

    step("deleteKey: 204, then getKey 404 as the generated ErrorBody")
    deleted = delete_key.sync_detailed(new_id, client=admin)
    expect(deleted.status_code == 204, f"deleteKey: status {int(deleted.status_code)}")
    gone = answer(get_key.sync_detailed(new_id, client=admin), 404, M.ErrorBody, "getKey (deleted)")
    expect(isinstance(gone.error, M.ErrorDetail), "error is not an ErrorDetail")
    expect(gone.error.code == "key_not_found", f"error code {gone.error.code!r}")
    expect(gone.error.message != "", "an empty error message")
    unknown = verify(anonymous, new_raw, "verifyKey (deleted)")
    expect(
        unknown.valid is False and unknown.code == "NOT_FOUND", f"{unknown.valid} {unknown.code}"
    )

    step("listKeyEvents: each key's history, also after deletion")
    history = answer(
        list_key_events.sync_detailed(key_id, client=admin), 200, M.KeyHistory, "listKeyEvents"
    )
    kinds = [e.type_ for e in history.events]
    expect(
        kinds == ["KeyCreated", "KeyUpdated", "KeyDeactivated", "KeyReactivated", "KeyExpirySet"],
        f"history of the rotated key: {kinds}",
    )
    expect(history.next_cursor is None, f"next_cursor {history.next_cursor!r}")
    positions = [e.position for e in history.events]
    expect(positions == sorted(positions), f"positions out of order: {positions}")
    expect(all(e.key_id == key_id for e in history.events), "an event of another key")
    expect(all(e.actor == "python-client" for e in history.events), "an event of another actor")
    expect(
        history.events[2].data.additional_properties.get("reason") == "contract test",
        f"deactivation data {history.events[2].data.additional_properties}",
    )
    paged = answer(
        list_key_events.sync_detailed(key_id, client=admin, limit=2),
        200,
        M.KeyHistory,
        "listKeyEvents (page)",
    )
    expect(len(paged.events) == 2 and isinstance(paged.next_cursor, str), "a first page of 2")
    rest = answer(
        list_key_events.sync_detailed(
            key_id, client=admin, limit=1000, cursor=typing.cast(str, paged.next_cursor)
        ),
        200,
        M.KeyHistory,
        "listKeyEvents (next page)",
    )
    expect(
        [e.type_ for e in paged.events + rest.events] == kinds, "pages do not add up to the history"
    )
    ended = answer(
        list_key_events.sync_detailed(new_id, client=admin),
        200,
        M.KeyHistory,
        "listKeyEvents (deleted key)",
    )
    expect(
        [e.type_ for e in ended.events] == ["KeyCreated", "KeyDeleted"],
        f"deleted key's history: {[e.type_ for e in ended.events]}",
    )
    audit = answer(
        list_audit_events.sync_detailed(client=admin, key_id=key_id, order="desc", limit=1),
        200,
        M.AuditList,
        "listAuditEvents",
    )
    expect([e.type_ for e in audit.events] == ["KeyExpirySet"], "the newest audit event of the key")

    step("importKeys: a key by its hash, one bad item failing alone; then verifyKey VALID")
    foreign = IMPORT_PREFIX + secrets.token_urlsafe(24)
    item = M.ImportItem(
        hash_=hashlib.sha256(foreign.encode()).hexdigest(),
        prefix=foreign[:13],
        name="imported by the python client",
        permissions=["keys:read"],
    )
    bad = M.ImportItem(hash_="not a hash", prefix="ext_bad", name="bad")
    request = M.ImportRequest(
        keys=[M.ImportRequestKeysItem.from_dict(i.to_dict()) for i in (item, bad)],
    )
    result = answer(
        import_keys.sync_detailed(client=admin, body=request), 200, M.ImportResponse, "importKeys"
    )
    expect(
        [k.index for k in result.imported] == [0], f"imported {[k.index for k in result.imported]}"
    )
    expect([e.index for e in result.errors] == [1], f"errors {[e.index for e in result.errors]}")
    expect(
        result.errors[0].error.code == "validation_failed",
        f"bad item: {result.errors[0].error.code}",
    )
    imported_id = result.imported[0].id
    view = answer(
        get_key.sync_detailed(imported_id, client=admin), 200, M.KeyView, "getKey (imported)"
    )
    expect(view.imported is True, "imported is false")
    expect(view.prefix == foreign[:13], f"prefix {view.prefix!r}")
    expect(view.name == "imported by the python client", f"name {view.name!r}")
    checked = verify(anonymous, foreign, "verifyKey (imported)")
    expect(
        checked.valid is True and checked.code == "VALID" and checked.key_id == imported_id,
        f"{checked.code} {checked.key_id}",
    )
    resent = answer(
        import_keys.sync_detailed(
            client=admin,
            body=M.ImportRequest(keys=[M.ImportRequestKeysItem.from_dict(item.to_dict())]),
        ),
        200,
        M.ImportResponse,
        "importKeys (again)",
    )
    expect(
        [k.id for k in resent.imported] == [imported_id], "importing the hash again gave another id"
    )

    step("no credential: 401 as the generated ErrorBody")
    refused = answer(
        get_key.sync_detailed(
            key_id,
            client=AuthenticatedClient(
                base_url=base_url,
                token="not-a-jwt",
                raise_on_unexpected_status=True,
                timeout=timeout,
            ),
        ),
        401,
        M.ErrorBody,
        "getKey (bad token)",
    )
    expect(refused.error.code == "unauthorized", f"error code {refused.error.code!r}")


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python_client_lifecycle.py BASE_URL TOKEN", file=sys.stderr)
        return 2
    base_url, token = sys.argv[1], sys.argv[2]
    print(f"key lifecycle through the generated client against {base_url}:", flush=True)
    try:
        run(base_url, token)
    except Exception as e:  # noqa: BLE001 - any failure fails the test, with its step
        step_name = STEPS[-1] if STEPS else "(before the first step)"
        print(f"FAILED at step {step_name!r}: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc()
        return 1
    print(f"key lifecycle through the generated client: all {len(STEPS)} steps passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
