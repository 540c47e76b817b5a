from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from poly.events.v1 import events_pb2 as _events_pb2
from poly.options.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushEventRequest(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _events_pb2.EventEnvelope
    def __init__(self, event: _Optional[_Union[_events_pb2.EventEnvelope, _Mapping]] = ...) -> None: ...

class PushEventResponse(_message.Message):
    __slots__ = ("outcome",)
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[PushEventResponse.Outcome]
        OUTCOME_APPLIED: _ClassVar[PushEventResponse.Outcome]
        OUTCOME_DUPLICATE: _ClassVar[PushEventResponse.Outcome]
        OUTCOME_IGNORED: _ClassVar[PushEventResponse.Outcome]
    OUTCOME_UNSPECIFIED: PushEventResponse.Outcome
    OUTCOME_APPLIED: PushEventResponse.Outcome
    OUTCOME_DUPLICATE: PushEventResponse.Outcome
    OUTCOME_IGNORED: PushEventResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: PushEventResponse.Outcome
    def __init__(self, outcome: _Optional[_Union[PushEventResponse.Outcome, str]] = ...) -> None: ...
