"""Leases on orders in a real SQLite store: one holder at a time, expiry, dead holders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest

from certbroker.domain.errors import LeaseLost
from certbroker.domain.models import OrderState
from certbroker.services.leases import holder_is_dead, make_owner
from certbroker.services.order_run import split_chain
from certbroker.store.repository import Repository
from tests.unit.conftest import NOW, new_certificate


def _order(repo: Repository, owner: str | None = None) -> int:
    _, order = repo.create_certificate(new_certificate(), NOW, owner, NOW + timedelta(seconds=120))
    return order.id


def test_one_holder_at_a_time(repo: Repository) -> None:
    order_id = _order(repo)
    until = NOW + timedelta(seconds=120)
    assert repo.try_claim(order_id, "w1", NOW, until, None)
    assert not repo.try_claim(order_id, "w2", NOW, until, None)
    assert repo.try_claim(order_id, "w1", NOW, until, None)  # re-claiming your own is fine
    repo.mark_ordered(order_id, "w1", NOW, until, order_url="u", replaces=None)
    with pytest.raises(LeaseLost):
        repo.mark_presented(order_id, "w2", NOW, until)
    assert repo.get_order(order_id).state is OrderState.ORDERED


def test_expired_lease_can_be_taken_and_the_old_holder_stops(repo: Repository) -> None:
    order_id = _order(repo, owner="w1")
    later = NOW + timedelta(seconds=121)
    assert repo.try_claim(order_id, "w2", later, later + timedelta(seconds=120), None)
    with pytest.raises(LeaseLost):
        repo.mark_ordered(order_id, "w1", later, later, order_url="u", replaces=None)


def test_a_dead_holder_can_be_replaced_at_once(repo: Repository) -> None:
    order_id = _order(repo, owner="ghost")
    until = NOW + timedelta(seconds=120)
    assert not repo.try_claim(order_id, "w2", NOW, until, None)
    assert repo.try_claim(order_id, "w2", NOW, until, "ghost")


def test_finished_orders_cannot_be_claimed(repo: Repository) -> None:
    order_id = _order(repo, owner="w1")
    repo.fail_order(order_id, "w1", NOW, "boom", None)
    assert repo.get_order(order_id).state is OrderState.FAILED
    assert repo.get_certificate(1).status.value == "failed"
    assert not repo.try_claim(order_id, "w2", NOW, NOW + timedelta(seconds=5), None)
    assert repo.claimable_orders(NOW, 10) == []


def test_claimable_orders_list_free_leases_first_with_their_expiry(repo: Repository) -> None:
    held = _order(repo, owner="w1")  # older, so it would come first by time alone
    free = _order(repo)
    expired = _order(repo, owner="w2")
    until = NOW + timedelta(seconds=120)
    later = NOW + timedelta(seconds=60)
    repo.try_claim(expired, "w2", NOW, NOW + timedelta(seconds=30), None)
    listed = repo.claimable_orders(later, 10)
    # Free and expired leases first, so a worker takes one without reading the rest.
    assert [order_id for order_id, _, _ in listed] == [free, expired, held]
    assert listed[0][1:] == (None, None)
    assert listed[1][1:] == ("w2", NOW + timedelta(seconds=30))
    assert listed[2][1:] == ("w1", until)


def test_claim_next_takes_free_and_expired_leases_once_each(repo: Repository) -> None:
    held = _order(repo, owner="w1")
    first = _order(repo)
    expired = _order(repo, owner="w2")
    repo.try_claim(expired, "w2", NOW, NOW + timedelta(seconds=30), None)
    later = NOW + timedelta(seconds=60)
    until = later + timedelta(seconds=120)
    taken = [repo.claim_next(f"w{n}", later, until) for n in range(3, 7)]
    assert [o.id if o else None for o in taken] == [first, expired, None, None]
    assert taken[0] is not None and taken[0].lease_owner == "w3"
    assert repo.get_order(expired).lease_owner == "w4"
    assert repo.get_order(held).lease_owner == "w1"  # its lease still runs


def test_claim_next_waits_for_an_orders_next_run(repo: Repository) -> None:
    order_id = _order(repo, owner="w1")
    retry_at = NOW + timedelta(seconds=30)
    repo.hold(order_id, "w1", NOW, retry_at, "not before retry_at")
    assert repo.claim_next("w2", NOW + timedelta(seconds=29), retry_at) is None
    claimed = repo.claim_next("w2", retry_at, retry_at + timedelta(seconds=120))
    assert claimed is not None and claimed.id == order_id


def test_started_at_is_when_a_worker_first_took_the_order(repo: Repository) -> None:
    queued = _order(repo)
    assert repo.get_order(queued).started_at is None
    first = NOW + timedelta(seconds=5)
    repo.claim_next("w1", first, first + timedelta(seconds=1))
    repo.hold(queued, "w1", first, first, "let go")
    again = NOW + timedelta(seconds=9)
    assert repo.try_claim(queued, "w2", again, again + timedelta(seconds=120), None)
    order = repo.get_order(queued)
    assert order.created_at == NOW and order.started_at == first
    assert repo.get_order(_order(repo, owner="cli")).started_at == NOW  # --wait: at once


def test_only_a_claim_from_a_holder_that_never_let_go_is_a_takeover(repo: Repository) -> None:
    """`taken_over` decides whether a worker asks the CA for the account's orders (an
    order a dead holder may have created there): not for a fresh order, nor for the
    `--wait` process's own, nor after a failure let the order go; only when the holder
    died or its lease ran out."""
    until = NOW + timedelta(seconds=120)
    _order(repo)
    fresh = repo.claim_next("w1", NOW, until)
    assert fresh is not None and not fresh.taken_over
    cli = _order(repo, owner="cli")
    assert repo.try_claim(cli, "cli", NOW, until, None)
    assert not repo.get_order(cli).taken_over
    repo.retry_later(cli, "cli", NOW, attempts=1, message="x", problem=None, next_run_at=NOW)
    assert repo.try_claim(cli, "w2", NOW, until, None)
    assert not repo.get_order(cli).taken_over  # let go after a failure: nothing to find
    later = until + timedelta(seconds=1)
    taken = repo.claim_next("w3", later, later + timedelta(seconds=120))  # w1's ran out
    assert taken is not None and taken.id == fresh.id and taken.taken_over
    assert repo.try_claim(cli, "w4", NOW, until, "w2")  # w2 died
    assert repo.get_order(cli).taken_over
    own = repo.claim_next("w4", until, until + timedelta(seconds=120))  # its own ran out
    assert own is not None and own.id == cli and own.taken_over


def test_each_step_is_recorded_under_the_lease_only(repo: Repository) -> None:
    order_id = _order(repo, owner="w1")
    until = NOW + timedelta(seconds=120)
    steps = [
        (lambda o: repo.mark_ordered(order_id, o, NOW, until, order_url="u", replaces="r")),
        (lambda o: repo.mark_presented(order_id, o, NOW, until)),
        (lambda o: repo.mark_answered(order_id, o, NOW, until)),
        (lambda o: repo.mark_finalizing(order_id, o, NOW, until)),
    ]
    expected = [OrderState.ORDERED, OrderState.PRESENTED, OrderState.ANSWERED]
    expected.append(OrderState.FINALIZING)
    for step, state in zip(steps, expected, strict=True):
        before = repo.get_order(order_id).state
        with pytest.raises(LeaseLost):
            step("w2")
        assert repo.get_order(order_id).state is before, f"w2 moved {before} -> {state}"
        step("w1")
        assert repo.get_order(order_id).state is state, f"w1's step to {state} was lost"
    order = repo.get_order(order_id)
    assert (order.order_url, order.replaces, order.lease_owner) == ("u", "r", "w1")


def test_challenge_tokens_are_written_under_the_lease_only(repo: Repository) -> None:
    order_id = _order(repo, owner="w1")
    items = [("tok", "tok.thumb", "a.example.com", "http-01")]
    with pytest.raises(LeaseLost):
        repo.present_challenges(order_id, "w2", items, NOW)
    assert repo.key_authorization("tok") is None  # nothing half-written
    repo.present_challenges(order_id, "w1", items, NOW)
    assert repo.key_authorization("tok") == "tok.thumb"


def test_holder_is_dead_only_for_gone_local_processes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = socket.gethostname()
    assert holder_is_dead(f"{host}:{child.pid}:abcd")
    assert not holder_is_dead(f"{host}:{os.getpid()}:abcd")  # ourselves
    assert not holder_is_dead(make_owner("x"))
    assert not holder_is_dead(f"other-host:{child.pid}:abcd")  # cannot know: wait for expiry
    assert not holder_is_dead(None)


def test_split_chain_separates_leaf_and_intermediates() -> None:
    block = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"
    leaf, chain = split_chain(
        block.format("AAA") + "\n" + block.format("BBB") + block.format("CCC")
    )
    assert leaf == block.format("AAA")
    assert chain == block.format("BBB") + block.format("CCC")
