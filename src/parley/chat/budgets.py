"""Organization budgets for the API and CLI: read with usage and remaining amounts, update.

Limits are enforced at admission (`admission.py`); this module only reads and writes them, in the
caller's tenant context (an organization's budget is visible only to principals of that
organization, or system scope).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from parley.billing.budget import Spend, day_reset, month_reset, remaining_cents
from parley.billing.cost import decimal_text
from parley.chat import audit
from parley.chat.admission import limits_of
from parley.chat.catalog import Caller, SessionCatalog
from parley.chat.clock import utc_now
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.sql import Record

BUDGET_FIELDS = (
    "enabled",
    "daily_budget_cents",
    "monthly_budget_cents",
    "max_turns_per_session",
    "messages_per_minute_per_user",
    "messages_per_hour_per_org",
    "allowed_models",
    "approval_mode",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetView:
    """An organization's budget with today's and this month's usage rows (None: nothing spent)."""

    budget: Record | None
    daily: Record | None
    monthly: Record | None
    reserved: Decimal
    now: datetime

    @property
    def daily_used(self) -> Decimal:
        return self.daily["total_cost_cents"] if self.daily else Decimal(0)

    @property
    def monthly_used(self) -> Decimal:
        return self.monthly["total_cost_cents"] if self.monthly else Decimal(0)

    def as_json(self) -> dict[str, Any] | None:
        b = self.budget
        if b is None:
            return None
        limits = limits_of(b)
        daily_left, monthly_left = remaining_cents(
            limits, Spend(self.daily_used + self.reserved, self.monthly_used + self.reserved)
        )
        return {
            "enabled": b["enabled"],
            "dailyBudgetCents": _dec(b["daily_budget_cents"]),
            "monthlyBudgetCents": _dec(b["monthly_budget_cents"]),
            "dailyUsedCents": _dec(self.daily_used),
            "monthlyUsedCents": _dec(self.monthly_used),
            "reservedCents": _dec(self.reserved),
            "dailyRemainingCents": _dec(None if daily_left is None else max(daily_left, Decimal(0))),
            "monthlyRemainingCents": _dec(None if monthly_left is None else max(monthly_left, Decimal(0))),
            "dailyResetsAt": _iso(day_reset(self.now)),
            "monthlyResetsAt": _iso(month_reset(self.now)),
            "maxTurnsPerSession": b["max_turns_per_session"],
            "messagesPerMinutePerUser": b["messages_per_minute_per_user"],
            "messagesPerHourPerOrg": b["messages_per_hour_per_org"],
            "allowedModels": b["allowed_models"],
            "approvalMode": b["approval_mode"] or "per_step",
        }


def _dec(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return decimal_text(value)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class BudgetService:
    def __init__(self, db: Database, catalog: SessionCatalog, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.catalog = catalog
        self.clock = clock

    async def view(self, caller: Caller, org_id: str | None) -> BudgetView:
        org = self.catalog.resolve_org(caller, org_id)
        now = self.clock()
        daily_key, monthly_key = repo.period_keys(now)
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            return BudgetView(
                budget=await repo.get_budget(tx, org),
                daily=await repo.cost_usage(tx, org, period="daily", key=daily_key),
                monthly=await repo.cost_usage(tx, org, period="monthly", key=monthly_key),
                reserved=await repo.reserved_cents(tx, org, now=now),
                now=now,
            )

    async def update(self, caller: Caller, org_id: str | None, values: dict[str, Any]) -> BudgetView:
        """Set the given fields (others unchanged); None means unlimited, 0 means none."""
        unknown = set(values) - set(BUDGET_FIELDS)
        if unknown:
            raise ValueError(f"unknown budget fields: {sorted(unknown)}")
        org = self.catalog.resolve_org(caller, org_id)
        now = self.clock()
        async with self.db.unit(caller.tenant) as tx:
            await repo.upsert_budget(tx, org, values, now=now)
            await audit.record(
                tx, audit.BUDGET_UPDATE, org_id=org, user_id=caller.user_id, now=now, detail={"fields": sorted(values)}
            )
        return await self.view(caller, org)
