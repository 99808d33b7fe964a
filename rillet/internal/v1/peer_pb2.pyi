from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerBatch(_message.Message):
    __slots__ = ("from_node", "to_node", "groups")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    from_node: int
    to_node: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupMessages]
    def __init__(self, from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupMessages, _Mapping]]] = ...) -> None: ...

class GroupMessages(_message.Message):
    __slots__ = ("group_id", "messages")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, group_id: _Optional[int] = ..., messages: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PeerAck(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: int
    def __init__(self, batches: _Optional[int] = ...) -> None: ...
