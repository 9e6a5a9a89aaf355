"""Rounds (issue #16): after a retrain, the experiment's next version is the next round, the
champion against the retrained challenger. Pure: states in, states out (``evaluator.server``
checks what needs the database: the cooldown, the model store, the request already started).

The champion is the arm serving 100 % (after a promote, a keep/stop or a rollback), else the
control arm. It stays control with its name, its model and the buckets it owns; the
challenger is a new arm ``r<round>`` taking its share from the champion's buckets. Arms of
the previous round that lost are dropped (their rows and decisions stay for audit).
"""

from __future__ import annotations

from dataclasses import replace

from abgate.errors import FailedPrecondition
from evaluator.experiments import CANARY_STAGES, Arm, ExperimentState
from gateway.allocation import WEIGHT_TOLERANCE, Allocation, AllocationError

# A round has ended (one arm serves everything) in these statuses; only then may the next one
# start.
ENDED = ("promoted", "stopped", "rolled_back")
AWAITING_APPROVAL = "awaiting_approval"


def champion(state: ExperimentState) -> Arm:
    """The arm serving 100 %, else the control arm."""
    for arm in state.arms:
        if arm.weight >= 100.0 - WEIGHT_TOLERANCE:
            return arm
    return state.control


def challenger_name(state: ExperimentState, round_no: int) -> str:
    """``r<round>``, unless the champion is already called that (then ``r<round>-b``...)."""
    name, suffix = f"r{round_no}", "b"
    taken = {champion(state).name}
    while name in taken:
        name, suffix = f"r{round_no}-{suffix}", chr(ord(suffix) + 1)
    return name


def start_weights(kind: str) -> tuple[float, float]:
    """(champion, challenger) percent at the start of a round: a canary's first stage, else an
    even split (A/B; a bandit starts even and re-weights itself)."""
    if kind == "canary":
        return 100.0 - CANARY_STAGES[0], CANARY_STAGES[0]
    return 50.0, 50.0


def next_round(
    state: ExperimentState,
    model_sha: str,
    *,
    now: float,
    retrain_request: int = 0,
    require_approval: bool = False,
) -> ExperimentState:
    """The next round of ``state``: control = its champion, challenger = ``model_sha``, split
    by kind, status running (or awaiting_approval with the champion still at 100 %). The
    round's clock (``created_at``: max duration; ``stage_started_at``: the canary's stage
    hold) starts now; the caller writes it as a new version, whose changed allocation starts
    the statistics afresh (``since_version``)."""
    if state.status not in ENDED:
        raise FailedPrecondition(
            f"experiment {state.name!r} is {state.status} (round {state.round}): a next round "
            f"starts only once the current one has ended ({', '.join(ENDED)})"
        )
    champ = champion(state)
    round_no = state.round + 1
    name = challenger_name(state, round_no)
    try:
        # The champion keeps every bucket it owns; the losers' go to it first (none, after a
        # promote), so no user of the champion moves unless the challenger takes them.
        held = Allocation.from_dict(state.allocation).reweight({champ.name: 100.0, name: 0.0})
    except AllocationError as exc:
        raise FailedPrecondition(f"experiment {state.name!r}: {exc}") from None
    waiting = replace(
        state,
        arms=(Arm(champ.name, champ.model, 100.0), Arm(name, model_sha, 0.0)),
        allocation=held.to_dict(),
        status=AWAITING_APPROVAL,
        canary_stage=0,
        created_at=now,
        stage_started_at=now,
        round=round_no,
        round_request=retrain_request,
    )
    if require_approval:
        return waiting
    return approved(waiting, now=now)


def approved(state: ExperimentState, *, now: float) -> ExperimentState:
    """A round left awaiting approval, started: the kind's starting split, status running."""
    if state.status != AWAITING_APPROVAL:
        raise FailedPrecondition(
            f"experiment {state.name!r} is {state.status}, not {AWAITING_APPROVAL}"
        )
    champ, challenger = state.arms
    w_champ, w_challenger = start_weights(state.kind)
    return state.with_weights(
        {champ.name: w_champ, challenger.name: w_challenger},
        status="running",
        canary_stage=0,
        created_at=now,
        stage_started_at=now,
    )
