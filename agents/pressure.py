"""GET /customers/{customer}/pressure: a sending service asks before it sends, not after."""

from __future__ import annotations

import time
from typing import Any, cast

import faust
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable

from agents.streaming import PartitionedState
from agents.topology import Topology
from models.decode import format_timestamp
from streams.catalog import format_duration
from streams.core.messaging import Budget, CustomerMessages, FrequencyPolicy
from streams.core.pressure import QueryError, read_question
from streams.core.privacy import state_pseudonym
from streams.settings import Settings

PATH = "/customers/{customer}/pressure"


class PressurePage:
    """Answers from the frequency table, on whichever worker owns the customer's partition."""

    def __init__(
        self, app: faust.App, topology: Topology, settings: Settings, policy: FrequencyPolicy
    ) -> None:
        self.app = app
        self.settings = settings
        self.policy = policy
        self.table = topology.customer_frequency
        self.frequency = PartitionedState(topology.customer_frequency)

    def attach(self) -> None:
        async def customer_pressure(view: Any, request: Any, customer: str) -> Any:
            try:
                # Read by whichever worker is asked: a bad query is refused without a hop.
                question = read_question(request.query.items(), int(time.time() * 1000))
            except QueryError as exc:
                return view.json(exc.as_json(), status=400)
            if not cast(Any, self.app.tables).recovery.completed.is_set():
                # Served from the worker's start (agents/membership), before its state is.
                return view.json({"error": "the worker is still restoring its state"}, status=503)
            key = self.table_key(customer)
            try:
                # Faust's router: the worker owning the key's partition answers, others proxy.
                return await self.app.router.route_req(self.table.name, key, view.web, request)
            except SameNode:
                pass
            except ServiceUnavailable:
                return view.json({"error": "no worker owns this customer yet"}, status=503)
            raw = self.frequency.get(key)
            state = CustomerMessages() if raw is None else CustomerMessages.decode(raw)
            budget = self.policy.budget(state, question.at_ms, question.channel, question.category)
            return view.json(self.answer(customer, budget))

        self.app.page(PATH)(customer_pressure)

    def table_key(self, customer: str) -> bytes:
        if self.settings.pseudonymise_ids:
            return state_pseudonym(customer, self.settings.pseudonym_key).encode()
        return customer.encode()

    def answer(self, customer: str, budget: Budget) -> dict[str, Any]:
        policy, pressure = self.policy.policy, budget.pressure
        return {
            "customer": customer,
            "at": format_timestamp(pressure.at_ms),
            "window": format_duration(policy.window_ms),
            "messages": pressure.total,
            "counted": pressure.counted,
            "by_channel": pressure.by_channel,
            "by_category": pressure.by_category,
            "limits": {
                "max_messages": policy.max_messages,
                "max_per_channel": policy.max_per_channel,
            },
            "remaining": budget.remaining,
            "remaining_by_channel": budget.remaining_by_channel,
            "quiet_hours_now": budget.quiet_hours_now,
            "would_break": list(budget.would_break),
            "allowed": not budget.would_break,
        }
