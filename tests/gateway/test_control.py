"""Config swaps at run time: validate → warm → atomic swap; a bad config keeps the old serving."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abgate.errors import ConfigError, FailedPrecondition, NotFound
from abgate.v1 import gateway_pb2 as pb
from gateway.config import load_config_file, parse_config
from gateway.hashing import NUM_BUCKETS
from tests.conftest import DemoStore, InProcessGateway, gateway_settings


def write_config(
    path: Path, version: int, arms: list[tuple[str, str, float]], **extra: Any
) -> Path:
    doc = {
        "version": version,
        "experiments": [
            {
                "name": "exp",
                "salt": "exp-salt",
                "arms": [{"name": n, "model": m, "weight": w} for n, m, w in arms],
                **extra,
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def arms_of(gw: InProcessGateway, users: list[str], row: np.ndarray) -> list[str]:
    raw = np.tile(row, (len(users), 1)).astype("<f4")
    resp = gw.stub.PredictBatch(
        pb.PredictBatchRequest(
            experiment="exp",
            user_ids=users,
            features=pb.Tensor(shape=list(raw.shape), raw=raw.tobytes()),
        ),
        timeout=30,
    )
    return [resp.arms[i].name for i in resp.arm_index]


@pytest.fixture
def cfg_gateway(demo_store: DemoStore, tmp_path: Path):  # type: ignore[no-untyped-def]
    logreg = demo_store.metas["demo-logreg"].sha256
    gbdt = demo_store.metas["demo-gbdt"].sha256
    path = write_config(
        tmp_path / "exp.json", 1, [("control", logreg, 50), ("treatment", gbdt, 50)]
    )
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, config=path))
    yield gw, path, logreg, gbdt
    gw.close()


def version(gw: InProcessGateway) -> int:
    snap = gw.server.dataplane.snapshot
    assert snap is not None
    return snap.version


def test_reweight_moves_the_minimum_and_never_moves_treated_users_back(
    cfg_gateway: Any, demo_store: DemoStore
) -> None:
    gw, path, logreg, gbdt = cfg_gateway
    users = [f"u{i}" for i in range(4000)]
    before = arms_of(gw, users, demo_store.X[0])
    alloc_before = gw.server.dataplane.snapshot.experiments["exp"].allocation
    write_config(path, 2, [("control", logreg, 30), ("treatment", gbdt, 70)])
    assert gw.call(gw.server.reload())
    assert version(gw) == 2
    alloc_after = gw.server.dataplane.snapshot.experiments["exp"].allocation
    assert alloc_before.moved(alloc_after) == 2000  # Σ|Δw|/2 = 20% of 10,000 buckets
    after = arms_of(gw, users, demo_store.X[0])
    assert all(a == "treatment" for b, a in zip(before, after, strict=True) if b == "treatment")
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    assert abs(moved / len(users) - 0.20) < 0.03


def test_bad_configs_keep_the_old_one_serving(cfg_gateway: Any, demo_store: DemoStore) -> None:
    gw, path, logreg, gbdt = cfg_gateway
    users = [f"u{i}" for i in range(500)]
    before = arms_of(gw, users, demo_store.X[0])
    for content in (
        "{not json",
        json.dumps({"version": 2}),
        json.dumps({"version": 0, "experiments": []}),
    ):
        path.write_text(content)
        assert not gw.call(gw.server.reload())
        assert version(gw) == 1
    for arms in (
        [("control", logreg, 50), ("treatment", gbdt, 40)],
        [("control", logreg, 50), ("treatment", "f" * 64, 50)],
        [("control", logreg, 50), ("control", gbdt, 50)],
        [("control", logreg, 50), ("treatment", "../../etc/passwd", 50)],
    ):
        write_config(path, 2, arms)
        assert not gw.call(gw.server.reload())
        assert version(gw) == 1
    assert arms_of(gw, users, demo_store.X[0]) == before


def test_control_plane_errors_carry_their_status(cfg_gateway: Any) -> None:
    gw, path, logreg, gbdt = cfg_gateway
    control = gw.server.control
    with pytest.raises(NotFound, match=r"arms\[1\]\.model"):
        control.apply(
            parse_config(
                {
                    "version": 5,
                    "experiments": [
                        {
                            "name": "exp",
                            "arms": [
                                {"name": "a", "model": logreg, "weight": 50},
                                {"name": "b", "model": "0" * 64, "weight": 50},
                            ],
                        }
                    ],
                }
            )
        )
    with pytest.raises(ConfigError, match="sum to 90"):
        parse_config(
            {
                "version": 5,
                "experiments": [
                    {
                        "name": "exp",
                        "arms": [
                            {"name": "a", "model": logreg, "weight": 50},
                            {"name": "b", "model": gbdt, "weight": 40},
                        ],
                    }
                ],
            }
        )
    write_config(path, 3, [("control", logreg, 60), ("treatment", gbdt, 40)])
    assert gw.call(gw.server.reload())
    stale = load_config_file(
        write_config(path, 2, [("control", logreg, 50), ("treatment", gbdt, 50)])
    )
    with pytest.raises(FailedPrecondition, match="older"):
        control.apply(stale)
    reused = load_config_file(
        write_config(path, 3, [("control", logreg, 10), ("treatment", gbdt, 90)])
    )
    with pytest.raises(FailedPrecondition, match="already serving"):
        control.apply(reused)
    assert version(gw) == 3
    assert control.apply(control.config) is None  # the same config again is a no-op


def test_file_watch_picks_up_a_new_file(demo_store: DemoStore, tmp_path: Path) -> None:
    logreg = demo_store.metas["demo-logreg"].sha256
    gbdt = demo_store.metas["demo-gbdt"].sha256
    path = write_config(
        tmp_path / "exp.toml.json", 1, [("control", logreg, 50), ("treatment", gbdt, 50)]
    )
    gw = InProcessGateway(gateway_settings(demo_store, tmp_path, config=path, watch_interval=0.1))
    try:
        write_config(path, 2, [("control", logreg, 10), ("treatment", gbdt, 90)])
        deadline = time.monotonic() + 10
        while version(gw) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert version(gw) == 2
    finally:
        gw.close()


def test_restart_reweights_from_the_persisted_allocation(
    demo_store: DemoStore, tmp_path: Path
) -> None:
    """Weights changed while down: users move as little as if the change had been live."""
    logreg = demo_store.metas["demo-logreg"].sha256
    gbdt = demo_store.metas["demo-gbdt"].sha256
    path = write_config(
        tmp_path / "exp.json", 1, [("control", logreg, 50), ("treatment", gbdt, 50)]
    )
    settings = gateway_settings(demo_store, tmp_path, config=path)
    gw = InProcessGateway(settings)
    write_config(path, 2, [("control", logreg, 80), ("treatment", gbdt, 20)])
    assert gw.call(gw.server.reload())
    alloc_live = gw.server.dataplane.snapshot.experiments["exp"].allocation
    gw.close()
    assert (settings.state_dir / "snapshot.json").exists()

    write_config(path, 3, [("control", logreg, 70), ("treatment", gbdt, 30)])
    gw2 = InProcessGateway(settings)
    try:
        alloc_restarted = gw2.server.dataplane.snapshot.experiments["exp"].allocation
        assert alloc_live.moved(alloc_restarted) == 1000
    finally:
        gw2.close()


def test_missing_config_file_falls_back_to_the_persisted_snapshot(
    demo_store: DemoStore, tmp_path: Path
) -> None:
    logreg = demo_store.metas["demo-logreg"].sha256
    gbdt = demo_store.metas["demo-gbdt"].sha256
    path = write_config(
        tmp_path / "exp.json", 4, [("control", logreg, 25), ("treatment", gbdt, 75)]
    )
    settings = gateway_settings(demo_store, tmp_path, config=path)
    InProcessGateway(settings).close()
    path.write_text("broken")
    gw = InProcessGateway(settings)
    try:
        assert version(gw) == 4
        counts = gw.server.dataplane.snapshot.experiments["exp"].allocation.counts()
        assert counts == {"control": NUM_BUCKETS // 4, "treatment": 3 * NUM_BUCKETS // 4}
    finally:
        gw.close()


def test_toml_and_json_configs_parse_alike(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'version = 3\n[[experiments]]\nname = "e"\n'
        '[[experiments.arms]]\nname = "a"\nmodel = "m1"\nweight = 60\n'
        '[[experiments.arms]]\nname = "b"\nmodel = "m2:3"\nweight = 40.0\n'
    )
    js = tmp_path / "c.json"
    js.write_text(
        json.dumps(
            {
                "version": 3,
                "experiments": [
                    {
                        "name": "e",
                        "arms": [
                            {"name": "a", "model": "m1", "weight": 60},
                            {"name": "b", "model": "m2:3", "weight": 40},
                        ],
                    }
                ],
            }
        )
    )
    assert load_config_file(toml) == load_config_file(js)
    assert load_config_file(toml).experiments[0].salt == "e"


@pytest.mark.parametrize("name", ["exp\n", "exp\n\n", "\nexp"])
def test_a_name_with_a_newline_is_refused(name: str) -> None:
    # A regex's `$` also matches before a final newline: the name must match whole.
    arms = [{"name": "a", "model": "0" * 64, "weight": 100}]
    with pytest.raises(ConfigError, match="must be 1-128 characters"):
        parse_config({"version": 1, "experiments": [{"name": name, "arms": arms}]})
