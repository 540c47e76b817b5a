"""ListDeliveries and ListWebhooks pages while another thread inserts (no item served twice, none
that existed before skipped), and UpdateTemplate's refusal of bad update masks."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import field_mask_pb2

from poly.notifications.v1 import notifications_service_pb2 as pb
from poly.notifications.v1 import resources_pb2
from tests.notifications.test_service import (
    System,
    _paid,
    _push,
    _refused,
    _user,
    _webhook,
    system,  # noqa: F401 - the module's deployment fixture, shared with test_service
)
from tests.support import paging
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("order_by", ["", "create_time asc"], ids=["default", "asc"])
def test_deliveries_page_without_duplicates_or_gaps(system: System, order_by: str) -> None:  # noqa: F811
    user = _user(system)

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListDeliveriesRequest(page_size=3, page_token=token, order_by=order_by)
        reply = system.notifications.ListDeliveries(request, metadata=system.admin, timeout=10)
        return paging.names(reply.deliveries), reply.next_page_token

    def insert() -> bool:
        _push(system, _paid(user))
        return True

    existing = len(paging.all_pages(page)[0])
    for _ in range(10):
        _push(system, _paid(user))
    # The dispatcher makes a notification's deliveries after the event is recorded.
    before = set(
        eventually(
            lambda: paging.at_least(existing + 10, paging.all_pages(page)[0]), what="10 more deliveries"
        )
    )
    names, pages, inserted = paging.while_inserting(insert, page)
    assert pages >= 4 and inserted, (pages, inserted)
    assert len(names) == len(set(names)), "no delivery is served twice"
    assert before <= set(names), "every delivery that existed before the listing is served"
    assert set(names) <= set(paging.all_pages(page)[0])


def test_webhooks_page_without_duplicates_or_gaps(system: System) -> None:  # noqa: F811
    user = _user(system)
    for _ in range(4):
        _webhook(system, user)

    def page(token: str) -> tuple[list[str], str]:
        request = pb.ListWebhooksRequest(page_size=3, page_token=token)
        reply = system.notifications.ListWebhooks(request, metadata=user.metadata, timeout=10)
        return paging.names(reply.webhooks), reply.next_page_token

    # A user may hold 10 webhooks: a paced writer adds one whenever a page has been served,
    # so each of the 6 it may add lands while the listing is under way.
    served = threading.Semaphore(0)

    def listed(token: str) -> tuple[list[str], str]:
        found = page(token)
        served.release()
        return found

    def insert() -> bool:
        if not served.acquire(timeout=10):
            return False
        _webhook(system, user)
        return True

    before = set(paging.all_pages(page)[0])
    assert len(before) == 4
    names, pages, inserted = paging.while_inserting(insert, listed, limit=6)
    assert pages >= 2 and inserted, (pages, inserted)
    assert len(names) == len(set(names)), "no webhook is served twice"
    assert before <= set(names), "every webhook that existed before the listing is served"
    everything = set(paging.all_pages(page)[0])
    assert set(names) <= everything and len(everything) == 4 + inserted


@pytest.mark.parametrize(
    ("paths", "bad"),
    [
        (["colour"], [0]),
        (["name", "colour"], [1]),
        (["event_type", "update_time", "colour"], [2]),
        (["subject.text"], [0]),
        (["subject", "*"], [1]),
        (["*", "subject"], [0]),
        (["subject", "event_type", "body_text", "colour"], [3]),
    ],
    ids=[
        "unknown",
        "identifier-ignored-unknown-named",
        "output-only-ignored-unknown-named",
        "nested",
        "star-after-another",
        "star-before-another",
        "every-bad-path-named",
    ],
)
def test_bad_update_masks_are_refused_and_change_nothing(
    system: System,  # noqa: F811
    paths: list[str],
    bad: list[int],
) -> None:
    name = "templates/order-paid"
    before = system.notifications.GetTemplate(pb.GetTemplateRequest(name=name), metadata=system.admin)
    template = resources_pb2.Template(
        name=name, event_type="poly.events.v1.OrderCancelled", subject="Changed", body_text="Changed"
    )
    request = pb.UpdateTemplateRequest(template=template, update_mask=field_mask_pb2.FieldMask(paths=paths))
    code, reason, violations = _refused(system.notifications.UpdateTemplate, request, system.admin)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UPDATE_MASK_INVALID")
    assert set(violations) == {f"update_mask.paths[{i}]" for i in bad}  # type: ignore[call-overload]
    after = system.notifications.GetTemplate(pb.GetTemplateRequest(name=name), metadata=system.admin)
    assert after == before
