from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "raw", "datatype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw: bytes
    datatype: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., raw: _Optional[bytes] = ..., datatype: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("id", "version", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    sha256: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("experiment", "user_id", "features", "request_id")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    user_id: str
    features: Tensor
    request_id: str
    def __init__(self, experiment: _Optional[str] = ..., user_id: _Optional[str] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "experiment", "arm", "model", "label", "scores", "config_version", "bucket", "hash_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    experiment: str
    arm: str
    model: ModelRef
    label: int
    scores: _containers.RepeatedScalarFieldContainer[float]
    config_version: int
    bucket: int
    hash_version: int
    def __init__(self, request_id: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., label: _Optional[int] = ..., scores: _Optional[_Iterable[float]] = ..., config_version: _Optional[int] = ..., bucket: _Optional[int] = ..., hash_version: _Optional[int] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("experiment", "user_ids", "features", "request_ids")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    features: Tensor
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ArmInfo(_message.Message):
    __slots__ = ("name", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: ModelRef
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("experiment", "config_version", "hash_version", "arms", "arm_index", "buckets", "labels", "scores", "request_ids")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    ARM_INDEX_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    config_version: int
    hash_version: int
    arms: _containers.RepeatedCompositeFieldContainer[ArmInfo]
    arm_index: _containers.RepeatedScalarFieldContainer[int]
    buckets: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    scores: Tensor
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment: _Optional[str] = ..., config_version: _Optional[int] = ..., hash_version: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[ArmInfo, _Mapping]]] = ..., arm_index: _Optional[_Iterable[int]] = ..., buckets: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[int]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ..., request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamPredictResponse(_message.Message):
    __slots__ = ("response", "error_code", "error_message", "request_id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    response: PredictResponse
    error_code: int
    error_message: str
    request_id: str
    def __init__(self, response: _Optional[_Union[PredictResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StreamPredictBatchResponse(_message.Message):
    __slots__ = ("response", "error_code", "error_message")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    response: PredictBatchResponse
    error_code: int
    error_message: str
    def __init__(self, response: _Optional[_Union[PredictBatchResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("request_id", "value", "source")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    value: float
    source: str
    def __init__(self, request_id: _Optional[str] = ..., value: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class RecordOutcomeRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class RecordOutcomeResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
