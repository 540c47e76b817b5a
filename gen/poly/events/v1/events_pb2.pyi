import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from poly.type.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_WEBHOOK: _ClassVar[Channel]
CHANNEL_UNSPECIFIED: Channel
CHANNEL_EMAIL: Channel
CHANNEL_WEBHOOK: Channel

class EventEnvelope(_message.Message):
    __slots__ = ("id", "type", "aggregate_id", "sequence", "occur_time", "source", "schema_version", "trace_context", "payload")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    aggregate_id: str
    sequence: int
    occur_time: _timestamp_pb2.Timestamp
    source: str
    schema_version: int
    trace_context: _containers.ScalarMap[str, str]
    payload: _any_pb2.Any
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., aggregate_id: _Optional[str] = ..., sequence: _Optional[int] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., schema_version: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class OrderLine(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price", "total")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price: _money_pb2.Money
    total: _money_pb2.Money
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class UserRegistered(_message.Message):
    __slots__ = ("user", "email", "display_name")
    USER_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    user: str
    email: str
    display_name: str
    def __init__(self, user: _Optional[str] = ..., email: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class UserDeleted(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class OrderCreated(_message.Message):
    __slots__ = ("order", "owner", "total", "lines")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    order: str
    owner: str
    total: _money_pb2.Money
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    def __init__(self, order: _Optional[str] = ..., owner: _Optional[str] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ...) -> None: ...

class OrderCancelled(_message.Message):
    __slots__ = ("order", "owner", "reason", "payment")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    order: str
    owner: str
    reason: str
    payment: str
    def __init__(self, order: _Optional[str] = ..., owner: _Optional[str] = ..., reason: _Optional[str] = ..., payment: _Optional[str] = ...) -> None: ...

class OrderPaid(_message.Message):
    __slots__ = ("order", "owner", "payment", "amount")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    order: str
    owner: str
    payment: str
    amount: _money_pb2.Money
    def __init__(self, order: _Optional[str] = ..., owner: _Optional[str] = ..., payment: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class OrderPaymentFailed(_message.Message):
    __slots__ = ("order", "owner", "payment", "reason")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    order: str
    owner: str
    payment: str
    reason: str
    def __init__(self, order: _Optional[str] = ..., owner: _Optional[str] = ..., payment: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class OrderFulfilled(_message.Message):
    __slots__ = ("order", "owner", "payment")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    order: str
    owner: str
    payment: str
    def __init__(self, order: _Optional[str] = ..., owner: _Optional[str] = ..., payment: _Optional[str] = ...) -> None: ...

class PaymentAuthorized(_message.Message):
    __slots__ = ("payment", "order", "account", "owner", "amount")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payment: str
    order: str
    account: str
    owner: str
    amount: _money_pb2.Money
    def __init__(self, payment: _Optional[str] = ..., order: _Optional[str] = ..., account: _Optional[str] = ..., owner: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class PaymentFailed(_message.Message):
    __slots__ = ("payment", "order", "account", "owner", "amount", "reason")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    payment: str
    order: str
    account: str
    owner: str
    amount: _money_pb2.Money
    reason: str
    def __init__(self, payment: _Optional[str] = ..., order: _Optional[str] = ..., account: _Optional[str] = ..., owner: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class PaymentCaptured(_message.Message):
    __slots__ = ("payment", "order", "account", "owner", "amount")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payment: str
    order: str
    account: str
    owner: str
    amount: _money_pb2.Money
    def __init__(self, payment: _Optional[str] = ..., order: _Optional[str] = ..., account: _Optional[str] = ..., owner: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class PaymentVoided(_message.Message):
    __slots__ = ("payment", "order", "account", "owner", "amount")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payment: str
    order: str
    account: str
    owner: str
    amount: _money_pb2.Money
    def __init__(self, payment: _Optional[str] = ..., order: _Optional[str] = ..., account: _Optional[str] = ..., owner: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class PaymentRefunded(_message.Message):
    __slots__ = ("payment", "order", "account", "owner", "amount", "refunded_total", "fully_refunded", "reason")
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FULLY_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    payment: str
    order: str
    account: str
    owner: str
    amount: _money_pb2.Money
    refunded_total: _money_pb2.Money
    fully_refunded: bool
    reason: str
    def __init__(self, payment: _Optional[str] = ..., order: _Optional[str] = ..., account: _Optional[str] = ..., owner: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., refunded_total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., fully_refunded: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class NotificationDelivered(_message.Message):
    __slots__ = ("delivery", "recipient", "channel", "event_type", "event_id", "attempts")
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    delivery: str
    recipient: str
    channel: Channel
    event_type: str
    event_id: str
    attempts: int
    def __init__(self, delivery: _Optional[str] = ..., recipient: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class NotificationFailed(_message.Message):
    __slots__ = ("delivery", "recipient", "channel", "event_type", "event_id", "attempts", "error")
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    delivery: str
    recipient: str
    channel: Channel
    event_type: str
    event_id: str
    attempts: int
    error: str
    def __init__(self, delivery: _Optional[str] = ..., recipient: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
