"""Order fulfillment: the example saga that ``sagakit demo`` runs (I1, in one process).

Four participants reached over the in-process bus, each keeping its ledger in its own tables
(prefix ``demo_``) in the same database as the store, so one run exercises commands, replies,
the outbox and the inbox:

1. reserve inventory   (compensation: release)
2. process payment     (compensation: refund)    — a declined card fails here
3. create shipment     (compensation: cancel)
4. send confirmation   (retriable: after the shipment the order only goes forward)

The ledger rule, per order: completed ⇒ exactly one reservation, one charge and one shipment;
failed ⇒ every effect undone (net zero); stuck ⇒ reported apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sagakit.app import App
from sagakit.definition import RetryPolicy, Saga
from sagakit.encoding import JSON
from sagakit.errors import StepFailed
from sagakit.participant import Command, Participant
from sagakit.ports import ParticipantTx

DECLINED_CARD = "tok_declined"

LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS demo_reservations (order_id TEXT NOT NULL,"
    " sku TEXT NOT NULL, quantity INTEGER NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_payments (order_id TEXT NOT NULL,"
    " amount INTEGER NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_shipments (order_id TEXT NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_notifications (order_id TEXT NOT NULL)",
)


@dataclass(frozen=True)
class Order:
    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    card: str


def _order(cmd: Command) -> dict[str, JSON]:
    value = cmd.input
    assert isinstance(value, dict)
    return value


def _tables(*statements: str) -> Callable[[ParticipantTx], Awaitable[None]]:
    async def setup(tx: ParticipantTx) -> None:
        for statement in statements:
            await tx.execute(statement)

    return setup


inventory = Participant("inventory", setup=_tables(LEDGER_SCHEMA[0]))
payments = Participant("payments", setup=_tables(LEDGER_SCHEMA[1]))
shipping = Participant("shipping", setup=_tables(LEDGER_SCHEMA[2]))
notifications = Participant("notifications", setup=_tables(LEDGER_SCHEMA[3]))


@inventory.command("inventory.reserve")
async def reserve(tx: ParticipantTx, cmd: Command) -> JSON:
    order = _order(cmd)
    await tx.execute(
        "INSERT INTO demo_reservations (order_id, sku, quantity, status) VALUES (?, ?, ?, ?)",
        (order["order_id"], order["sku"], order["quantity"], "reserved"),
    )
    return {"reserved": order["quantity"]}


@inventory.command("inventory.release")
async def release(tx: ParticipantTx, cmd: Command) -> JSON:
    await tx.execute(
        "UPDATE demo_reservations SET status = 'released'"
        " WHERE order_id = ? AND status = 'reserved'",
        (_order(cmd)["order_id"],),
    )
    return None


@payments.command("payment.charge")
async def charge(tx: ParticipantTx, cmd: Command) -> JSON:
    order = _order(cmd)
    if order["card"] == DECLINED_CARD:
        raise StepFailed("card declined")
    await tx.execute(
        "INSERT INTO demo_payments (order_id, amount, status) VALUES (?, ?, 'charged')",
        (order["order_id"], order["amount_cents"]),
    )
    return {"charged": order["amount_cents"]}


@payments.command("payment.refund")
async def refund(tx: ParticipantTx, cmd: Command) -> JSON:
    await tx.execute(
        "UPDATE demo_payments SET status = 'refunded' WHERE order_id = ? AND status = 'charged'",
        (_order(cmd)["order_id"],),
    )
    return None


@shipping.command("shipment.create")
async def create_shipment(tx: ParticipantTx, cmd: Command) -> JSON:
    order_id = _order(cmd)["order_id"]
    await tx.execute(
        "INSERT INTO demo_shipments (order_id, status) VALUES (?, 'created')", (order_id,)
    )
    return {"tracking": f"TRK-{order_id}"}


@shipping.command("shipment.cancel")
async def cancel_shipment(tx: ParticipantTx, cmd: Command) -> JSON:
    await tx.execute(
        "UPDATE demo_shipments SET status = 'cancelled' WHERE order_id = ? AND status = 'created'",
        (_order(cmd)["order_id"],),
    )
    return None


@notifications.command("notification.send")
async def send_confirmation(tx: ParticipantTx, cmd: Command) -> JSON:
    await tx.execute(
        "INSERT INTO demo_notifications (order_id) VALUES (?)", (_order(cmd)["order_id"],)
    )
    return None


# Participants run in the worker's process here and answer in milliseconds; a few seconds is
# a generous bound that still lets a lost reply (a worker killed mid-step) be retried quickly.
_REMOTE: dict[str, Any] = {
    "timeout": 5.0,
    "compensation_timeout": 5.0,
    "retry": RetryPolicy(max_attempts=5, initial_delay=0.2),
    "compensation_retry": RetryPolicy(max_attempts=10, initial_delay=0.2),
}

order_saga = (
    Saga("order_fulfillment", version=1, data_type=Order)
    .remote(
        "reserve_inventory",
        participant="inventory",
        command="inventory.reserve",
        compensation="inventory.release",
        **_REMOTE,
    )
    .remote(
        "process_payment",
        participant="payments",
        command="payment.charge",
        compensation="payment.refund",
        **_REMOTE,
    )
    .remote(
        "create_shipment",
        participant="shipping",
        command="shipment.create",
        compensation="shipment.cancel",
        **_REMOTE,
    )
    .remote(
        "send_confirmation",
        participant="notifications",
        command="notification.send",
        kind="retriable",
        timeout=5.0,
        retry=RetryPolicy(max_attempts=10, initial_delay=0.2),
    )
    .build()
)

app = App(sagas=[order_saga], participants=[inventory, payments, shipping, notifications])


async def create_ledgers(tx: ParticipantTx) -> None:
    for statement in LEDGER_SCHEMA:
        await tx.execute(statement)


async def check_ledgers(tx: ParticipantTx) -> list[str]:
    """Violations of the ledger rule over every order in the database (empty: all good)."""
    problems: list[str] = []
    rows = await tx.execute(
        "SELECT i.status, i.correlation_id,"
        " (SELECT count(*) FROM demo_reservations r WHERE r.order_id = i.correlation_id),"
        " (SELECT count(*) FROM demo_reservations r WHERE r.order_id = i.correlation_id"
        "   AND r.status = 'reserved'),"
        " (SELECT count(*) FROM demo_payments p WHERE p.order_id = i.correlation_id),"
        " (SELECT count(*) FROM demo_payments p WHERE p.order_id = i.correlation_id"
        "   AND p.status = 'charged'),"
        " (SELECT count(*) FROM demo_shipments s WHERE s.order_id = i.correlation_id),"
        " (SELECT count(*) FROM demo_shipments s WHERE s.order_id = i.correlation_id"
        "   AND s.status = 'created')"
        " FROM sagakit_instances i WHERE i.saga_type = ?",
        (order_saga.name,),
    )
    for status, order_id, res, res_live, pay, pay_live, ship, ship_live in rows:
        if max(int(str(res)), int(str(pay)), int(str(ship))) > 1:
            problems.append(f"{order_id}: an effect was applied twice ({res}/{pay}/{ship})")
        if status == "completed" and (res_live, pay_live, ship_live) != (1, 1, 1):
            problems.append(
                f"{order_id}: completed but ledgers hold {res_live}/{pay_live}/{ship_live}"
            )
        if status == "failed" and (res_live, pay_live, ship_live) != (0, 0, 0):
            problems.append(
                f"{order_id}: failed but ledgers still hold {res_live}/{pay_live}/{ship_live}"
            )
    return problems
