"""The orders service, declared: ``python -m services.orders`` serves it (`kit.app.run`)."""

from pathlib import Path

from poly.orders.v1 import orders_service_pb2, orders_service_pb2_grpc
from services.kit import app
from services.orders import payment, store, watch
from services.orders.domain import Orders
from services.orders.service import OrdersServicer


def wire(context: app.Context[None]) -> app.Parts:
    hub = watch.ChangeHub()
    orders = Orders(store.OrdersStore(context.engine, context.outbox, hub.notify).transaction)
    # The saga's payment step: each new order is handed to the worker, which asks payments.
    payment_worker = payment.PaymentWorker(
        orders, payment.GrpcPayments(context.channels), background=context.background
    )
    orders.hand_over = payment_worker
    return app.Parts(
        servicer=OrdersServicer(orders, hub),
        workers=[payment_worker, watch.Recheck(hub, orders.versions, orders.find)],
    )


SERVICE = app.Service(
    name="orders",
    api=orders_service_pb2.DESCRIPTOR.services_by_name["OrdersService"],
    add_servicer=orders_service_pb2_grpc.add_OrdersServiceServicer_to_server,
    migrations=Path(__file__).with_name("migrations"),
    bus_tables=store.BUS,
    calls={"payments": [payment.PAYMENTS_SERVICE]},
    settings=app.no_settings,
    wire=wire,
)

if __name__ == "__main__":
    app.run(SERVICE)
