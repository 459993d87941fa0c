"""Rate-limit budgets over the API: the same service as `certbroker budget`, an admin's
(the usage names every registered domain and account; an operator sees why one of its
certificates waits on the certificate itself)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import Admin, BrokerDep
from certbroker.api.problems import ERRORS

router = APIRouter(tags=["budgets"], responses=ERRORS)
BudgetText = Annotated[str, Field(max_length=40, description="COUNT/WINDOW (300/3h), or none.")]


class BudgetChange(BaseModel):
    """Only the budgets given change; null puts one back to the built-in one."""

    model_config = ConfigDict(extra="forbid")
    ca: Annotated[str, Field(max_length=300, description="Directory URL, or an account's name.")]
    orders_per_account: BudgetText | None = None
    certificates_per_domain: BudgetText | None = None


@router.get("/budgets", response_model=dict[str, Any])
def budgets(_p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Each CA's budgets, what its accounts and registered domains used of them in the
    window, and any hold the CA asked for (a rateLimited answer's Retry-After)."""
    return broker.budgets.usage()


@router.put("/budgets", response_model=dict[str, Any])
def set_budgets(body: BudgetChange, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Set a CA's budgets for every process and node; an order that would go past one
    waits in the queue until the window has room."""
    url, found = broker.budgets.set(body.ca, body.model_dump(exclude_unset=True, exclude={"ca"}))
    return {"ca": url, **found.to_json()}
