from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreItem(_message.Message):
    __slots__ = ("question", "response", "golden_answers")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    question: str
    response: str
    golden_answers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, question: _Optional[str] = ..., response: _Optional[str] = ..., golden_answers: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("preset", "items")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    preset: str
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    def __init__(self, preset: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ...) -> None: ...

class ItemScore(_message.Message):
    __slots__ = ("reward", "em", "cem", "f1", "format_ok", "num_searches")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    EM_FIELD_NUMBER: _ClassVar[int]
    CEM_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    FORMAT_OK_FIELD_NUMBER: _ClassVar[int]
    NUM_SEARCHES_FIELD_NUMBER: _ClassVar[int]
    reward: float
    em: float
    cem: float
    f1: float
    format_ok: bool
    num_searches: int
    def __init__(self, reward: _Optional[float] = ..., em: _Optional[float] = ..., cem: _Optional[float] = ..., f1: _Optional[float] = ..., format_ok: _Optional[bool] = ..., num_searches: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ItemScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[ItemScore, _Mapping]]] = ...) -> None: ...
