"""onnxruntime sessions, one per model sha256, created from verified store bytes and warmed up."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from abgate.errors import ConfigError
from abgate.settings import GatewaySettings
from gateway.modelstore import ExternalData, ModelMetadata, ModelStore, check_self_contained

log = logging.getLogger(__name__)

WARMUP_RUNS = 20
NO_EXTERNAL_DATA_DIR = os.path.join(os.devnull, "no-external-data")  # under a device file


@dataclass(frozen=True)
class SessionOptions:
    """Thread settings; defaults chosen by measurement (docs/design.md, "Serving")."""

    intra_op_threads: int = 1
    spinning: bool = False

    # The settings these come from (ABGATE_ORT_INTRA_OP_THREADS, ABGATE_ORT_SPINNING).
    SETTINGS: ClassVar[tuple[str, ...]] = ("ort_intra_op_threads", "ort_spinning")

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> SessionOptions:
        return cls(intra_op_threads=settings.ort_intra_op_threads, spinning=settings.ort_spinning)

    def build(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn a core waiting for work and fight the gRPC threads on 2 cores.
        flag = "1" if self.spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
        opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
        # Sessions are built from bytes; onnxruntime would then resolve an external-data file
        # against the working directory. Models are checked self-contained first; this is the
        # second lock: a directory that cannot exist, so no such file is ever opened.
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", NO_EXTERNAL_DATA_DIR
        )
        return opts


class Variant:
    """A loaded model: ``run`` maps float32 rows to (labels, scores)."""

    __slots__ = (
        "_feeds_name",
        "_outputs",
        "_run",
        "_run_options",
        "meta",
        "n_classes",
        "n_features",
        "session",
    )

    def __init__(self, meta: ModelMetadata, onnx_bytes: bytes, options: SessionOptions) -> None:
        self.meta = meta
        try:
            # A model's behaviour is a function of its bytes (its sha256) alone.
            check_self_contained(onnx_bytes)
        except (ExternalData, ValueError) as exc:
            raise ConfigError(
                f"model {meta.id}:{meta.version} ({meta.sha256[:12]}) is refused: {exc}"
            ) from None
        try:
            self.session = ort.InferenceSession(
                onnx_bytes, sess_options=options.build(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ConfigError(f"model {meta.sha256[:12]} does not load: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != meta.input_name:
            raise ConfigError(f"model {meta.sha256[:12]}: input does not match its metadata")
        outputs = {o.name for o in self.session.get_outputs()}
        if not {meta.label_output, meta.scores_output} <= outputs:
            raise ConfigError(f"model {meta.sha256[:12]}: outputs do not match its metadata")
        self._feeds_name = meta.input_name
        self._outputs = [meta.label_output, meta.scores_output]
        # Passing RunOptions built once: with None, onnxruntime builds defaults on every call
        # (10.2 → 8.4 µs per one-row run in a tight loop). Run only reads them: safe to share.
        self._run_options = ort.RunOptions()
        # InferenceSession.run re-validates the feed names in Python on every call before
        # calling its binding (3–4 µs of an 11–15 µs one-row run, measured); the names were
        # checked against the metadata above, so call the binding itself when it is there.
        run = getattr(getattr(self.session, "_sess", None), "run", None)
        self._run = run if callable(run) else self.session.run
        self.n_features = meta.n_features
        self.n_classes = len(meta.classes)

    def run(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, scores = self._run(self._outputs, {self._feeds_name: rows}, self._run_options)
        return labels, scores

    def warm_up(self) -> None:
        # First runs allocate arenas and pick kernels; pay that before real traffic arrives.
        one = np.zeros((1, self.n_features), dtype=np.float32)
        many = np.zeros((64, self.n_features), dtype=np.float32)
        for _ in range(WARMUP_RUNS):
            self.run(one)
        self.run(many)


class VariantCache:
    """Sessions by sha256, shared across config versions so a reload only loads new models.

    Sessions no config references any more are dropped from the cache on ``retain``; requests
    still running on them hold their own reference, so they close once those calls finish.
    """

    def __init__(self, store: ModelStore, options: SessionOptions) -> None:
        self._store = store
        self._options = options
        self._by_sha: dict[str, Variant] = {}
        self._lock = threading.Lock()

    def get_or_load(self, meta: ModelMetadata) -> Variant:
        with self._lock:
            found = self._by_sha.get(meta.sha256)
        if found is not None:
            return found
        data = self._store.load_bytes(meta.sha256)  # verifies the sha256 of the bytes
        variant = Variant(meta, data, self._options)
        variant.warm_up()
        log.info("loaded model %s (%s:%s)", meta.sha256[:12], meta.id, meta.version)
        with self._lock:
            return self._by_sha.setdefault(meta.sha256, variant)

    def retain(self, shas: set[str]) -> None:
        with self._lock:
            for sha in list(self._by_sha):
                if sha not in shas:
                    del self._by_sha[sha]

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._by_sha)
