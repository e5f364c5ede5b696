from searchrl.proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("policy", "consumer", "tasks_done", "trajectories_written")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    policy: _common_pb2.PolicyInfo
    consumer: str
    tasks_done: int
    trajectories_written: int
    def __init__(self, policy: _Optional[_Union[_common_pb2.PolicyInfo, _Mapping]] = ..., consumer: _Optional[str] = ..., tasks_done: _Optional[int] = ..., trajectories_written: _Optional[int] = ...) -> None: ...

class SyncWeightsRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class WeightTransferPayload(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class FinishWeightUpdateRequest(_message.Message):
    __slots__ = ("version", "weights_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    weights_sha256: str
    def __init__(self, version: _Optional[int] = ..., weights_sha256: _Optional[str] = ...) -> None: ...
