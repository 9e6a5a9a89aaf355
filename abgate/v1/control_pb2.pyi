from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_KIND_UNSPECIFIED: _ClassVar[ExperimentKind]
    AB: _ClassVar[ExperimentKind]
    CANARY: _ClassVar[ExperimentKind]
    BANDIT: _ClassVar[ExperimentKind]
EXPERIMENT_KIND_UNSPECIFIED: ExperimentKind
AB: ExperimentKind
CANARY: ExperimentKind
BANDIT: ExperimentKind

class BucketRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ArmConfig(_message.Message):
    __slots__ = ("name", "model", "weight", "ranges")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    weight: float
    ranges: _containers.RepeatedCompositeFieldContainer[BucketRange]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., weight: _Optional[float] = ..., ranges: _Optional[_Iterable[_Union[BucketRange, _Mapping]]] = ...) -> None: ...

class ShadowConfig(_message.Message):
    __slots__ = ("name", "model", "sample_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    sample_rate: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., sample_rate: _Optional[float] = ...) -> None: ...

class ExperimentConfig(_message.Message):
    __slots__ = ("name", "salt", "arms", "shadows", "version", "feature_sample_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    salt: str
    arms: _containers.RepeatedCompositeFieldContainer[ArmConfig]
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowConfig]
    version: int
    feature_sample_rate: float
    def __init__(self, name: _Optional[str] = ..., salt: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[ArmConfig, _Mapping]]] = ..., shadows: _Optional[_Iterable[_Union[ShadowConfig, _Mapping]]] = ..., version: _Optional[int] = ..., feature_sample_rate: _Optional[float] = ...) -> None: ...

class ConfigSnapshot(_message.Message):
    __slots__ = ("version", "nonce", "experiments")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentConfig]
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., experiments: _Optional[_Iterable[_Union[ExperimentConfig, _Mapping]]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ExperimentStatus(_message.Message):
    __slots__ = ("name", "version", "rejected_version", "error_detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    rejected_version: int
    error_detail: ErrorDetail
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., rejected_version: _Optional[int] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ...) -> None: ...

class ConfigRequest(_message.Message):
    __slots__ = ("node_id", "version", "response_nonce", "error_detail", "experiments")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: int
    response_nonce: str
    error_detail: ErrorDetail
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentStatus]
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[int] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ..., experiments: _Optional[_Iterable[_Union[ExperimentStatus, _Mapping]]] = ...) -> None: ...

class Guardrails(_message.Message):
    __slots__ = ("max_error_rate", "max_p99_latency_ms", "rollback_threshold", "max_rate_increase")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_p99_latency_ms: float
    rollback_threshold: float
    max_rate_increase: float
    def __init__(self, max_error_rate: _Optional[float] = ..., max_p99_latency_ms: _Optional[float] = ..., rollback_threshold: _Optional[float] = ..., max_rate_increase: _Optional[float] = ...) -> None: ...

class DriftThresholds(_message.Message):
    __slots__ = ("psi_warn", "psi_act", "alpha")
    PSI_WARN_FIELD_NUMBER: _ClassVar[int]
    PSI_ACT_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    psi_warn: float
    psi_act: float
    alpha: float
    def __init__(self, psi_warn: _Optional[float] = ..., psi_act: _Optional[float] = ..., alpha: _Optional[float] = ...) -> None: ...

class ExperimentDefinition(_message.Message):
    __slots__ = ("name", "salt", "kind", "arms", "primary_metric", "min_effect", "confidence", "min_samples", "max_duration_s", "guardrails", "stage_hold_s", "bandit_floor", "bandit_interval_s", "shadows", "stage_min_rows", "feature_sample_rate", "drift")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    MIN_EFFECT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    GUARDRAILS_FIELD_NUMBER: _ClassVar[int]
    STAGE_HOLD_S_FIELD_NUMBER: _ClassVar[int]
    BANDIT_FLOOR_FIELD_NUMBER: _ClassVar[int]
    BANDIT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    name: str
    salt: str
    kind: ExperimentKind
    arms: _containers.RepeatedCompositeFieldContainer[ArmConfig]
    primary_metric: str
    min_effect: float
    confidence: float
    min_samples: int
    max_duration_s: float
    guardrails: Guardrails
    stage_hold_s: float
    bandit_floor: float
    bandit_interval_s: float
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowConfig]
    stage_min_rows: int
    feature_sample_rate: float
    drift: DriftThresholds
    def __init__(self, name: _Optional[str] = ..., salt: _Optional[str] = ..., kind: _Optional[_Union[ExperimentKind, str]] = ..., arms: _Optional[_Iterable[_Union[ArmConfig, _Mapping]]] = ..., primary_metric: _Optional[str] = ..., min_effect: _Optional[float] = ..., confidence: _Optional[float] = ..., min_samples: _Optional[int] = ..., max_duration_s: _Optional[float] = ..., guardrails: _Optional[_Union[Guardrails, _Mapping]] = ..., stage_hold_s: _Optional[float] = ..., bandit_floor: _Optional[float] = ..., bandit_interval_s: _Optional[float] = ..., shadows: _Optional[_Iterable[_Union[ShadowConfig, _Mapping]]] = ..., stage_min_rows: _Optional[int] = ..., feature_sample_rate: _Optional[float] = ..., drift: _Optional[_Union[DriftThresholds, _Mapping]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("winner", "p_value", "effect_size", "ci", "recommendation")
    WINNER_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CI_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    winner: str
    p_value: float
    effect_size: float
    ci: _containers.RepeatedScalarFieldContainer[float]
    recommendation: str
    def __init__(self, winner: _Optional[str] = ..., p_value: _Optional[float] = ..., effect_size: _Optional[float] = ..., ci: _Optional[_Iterable[float]] = ..., recommendation: _Optional[str] = ...) -> None: ...

class ExperimentView(_message.Message):
    __slots__ = ("definition", "status", "version", "snapshot_version", "weights", "verdict", "details_json", "rejections")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    definition: ExperimentDefinition
    status: str
    version: int
    snapshot_version: int
    weights: _containers.ScalarMap[str, float]
    verdict: Verdict
    details_json: str
    rejections: _containers.RepeatedCompositeFieldContainer[ExperimentRejection]
    def __init__(self, definition: _Optional[_Union[ExperimentDefinition, _Mapping]] = ..., status: _Optional[str] = ..., version: _Optional[int] = ..., snapshot_version: _Optional[int] = ..., weights: _Optional[_Mapping[str, float]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., details_json: _Optional[str] = ..., rejections: _Optional[_Iterable[_Union[ExperimentRejection, _Mapping]]] = ...) -> None: ...

class ExperimentRejection(_message.Message):
    __slots__ = ("node_id", "experiment", "version", "error", "serving_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    experiment: str
    version: int
    error: str
    serving_version: int
    def __init__(self, node_id: _Optional[str] = ..., experiment: _Optional[str] = ..., version: _Optional[int] = ..., error: _Optional[str] = ..., serving_version: _Optional[int] = ...) -> None: ...

class CreateExperimentRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: ExperimentDefinition
    def __init__(self, definition: _Optional[_Union[ExperimentDefinition, _Mapping]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("include_archived",)
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    include_archived: bool
    def __init__(self, include_archived: _Optional[bool] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentView]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentView, _Mapping]]] = ...) -> None: ...

class ExperimentRequest(_message.Message):
    __slots__ = ("name", "arm", "reason", "actor", "feature_sample_rate", "drift", "add_shadows", "remove_shadows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    ADD_SHADOWS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_SHADOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    arm: str
    reason: str
    actor: str
    feature_sample_rate: float
    drift: DriftThresholds
    add_shadows: _containers.RepeatedCompositeFieldContainer[ShadowConfig]
    remove_shadows: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., arm: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., feature_sample_rate: _Optional[float] = ..., drift: _Optional[_Union[DriftThresholds, _Mapping]] = ..., add_shadows: _Optional[_Iterable[_Union[ShadowConfig, _Mapping]]] = ..., remove_shadows: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewayState(_message.Message):
    __slots__ = ("node_id", "version", "connected", "last_error", "rejections")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: int
    connected: bool
    last_error: str
    rejections: _containers.RepeatedCompositeFieldContainer[ExperimentRejection]
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[int] = ..., connected: _Optional[bool] = ..., last_error: _Optional[str] = ..., rejections: _Optional[_Iterable[_Union[ExperimentRejection, _Mapping]]] = ...) -> None: ...

class GatewaysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewaysResponse(_message.Message):
    __slots__ = ("snapshot_version", "gateways")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayState]
    def __init__(self, snapshot_version: _Optional[int] = ..., gateways: _Optional[_Iterable[_Union[GatewayState, _Mapping]]] = ...) -> None: ...

class RequestRetrainRequest(_message.Message):
    __slots__ = ("experiment", "reason", "actor")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    reason: str
    actor: str
    def __init__(self, experiment: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RequestRetrainResponse(_message.Message):
    __slots__ = ("id", "created", "state", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    created: bool
    state: str
    attempts: int
    def __init__(self, id: _Optional[int] = ..., created: _Optional[bool] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class StartRoundRequest(_message.Message):
    __slots__ = ("experiment", "model", "retrain_request", "require_approval", "reason", "actor")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    model: str
    retrain_request: int
    require_approval: bool
    reason: str
    actor: str
    def __init__(self, experiment: _Optional[str] = ..., model: _Optional[str] = ..., retrain_request: _Optional[int] = ..., require_approval: _Optional[bool] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("name", "limit", "steps_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STEPS_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    steps_only: bool
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., steps_only: _Optional[bool] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("ts", "action", "recommendation", "source", "from_version", "to_version", "inputs_json", "statistics_json")
    TS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_JSON_FIELD_NUMBER: _ClassVar[int]
    ts: float
    action: str
    recommendation: str
    source: str
    from_version: int
    to_version: int
    inputs_json: str
    statistics_json: str
    def __init__(self, ts: _Optional[float] = ..., action: _Optional[str] = ..., recommendation: _Optional[str] = ..., source: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., inputs_json: _Optional[str] = ..., statistics_json: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...
