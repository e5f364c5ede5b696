from searchrl.proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightsRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class WeightChunk(_message.Message):
    __slots__ = ("version", "offset", "total_bytes", "data", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    offset: int
    total_bytes: int
    data: bytes
    sha256: str
    def __init__(self, version: _Optional[int] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class TrainerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("step", "policy", "done", "trained_trajectories", "dropped_groups", "checkpoint_step", "waiting_s", "groups_ready", "groups_needed", "stalled", "outstanding_tasks")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    WAITING_S_FIELD_NUMBER: _ClassVar[int]
    GROUPS_READY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    STALLED_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_TASKS_FIELD_NUMBER: _ClassVar[int]
    step: int
    policy: _common_pb2.PolicyInfo
    done: bool
    trained_trajectories: int
    dropped_groups: int
    checkpoint_step: int
    waiting_s: float
    groups_ready: int
    groups_needed: int
    stalled: bool
    outstanding_tasks: int
    def __init__(self, step: _Optional[int] = ..., policy: _Optional[_Union[_common_pb2.PolicyInfo, _Mapping]] = ..., done: _Optional[bool] = ..., trained_trajectories: _Optional[int] = ..., dropped_groups: _Optional[int] = ..., checkpoint_step: _Optional[int] = ..., waiting_s: _Optional[float] = ..., groups_ready: _Optional[int] = ..., groups_needed: _Optional[int] = ..., stalled: _Optional[bool] = ..., outstanding_tasks: _Optional[int] = ...) -> None: ...
