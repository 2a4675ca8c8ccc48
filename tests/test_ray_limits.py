"""``run --ray``'s report: the actors' limiters as one ("rate limits in force"), and the
jobs spread so that a small run still gives every actor its share."""

from __future__ import annotations

from llmbatch._api.ray_blocks import BLOCK, MIN_BLOCK, _size
from llmbatch._api.ray_limits import merge_limits

MODEL = "anthropic:claude-haiku-4-5"


def _described(rpm: float | None, sent: int, **extra: object) -> dict[str, object]:
    return {"rpm": rpm, "tpm": None, "source": "learned", "rate_limited": 2,
            "backoff_s": 0.25, "sent": sent, **extra}  # fmt: skip


def test_each_actor_holds_its_own_pace_so_the_cluster_runs_at_their_sum() -> None:
    merged = merge_limits([{MODEL: _described(300.0, 40)}, {MODEL: _described(250.0, 35)}, {}])
    assert merged == {
        MODEL: {
            "rpm": 550.0,
            "tpm": None,
            "source": "learned",
            "rate_limited": 4,
            "backoff_s": 0.5,
            "sent": 75,
            "workers": 2,
        }  # fmt: skip
    }


def test_a_limit_held_in_redis_for_all_is_said_once() -> None:
    shared = {"shared": "redis", "processes": 2}
    merged = merge_limits([{MODEL: _described(600.0, 40, **shared)},
                           {MODEL: _described(600.0, 35, **shared)}])  # fmt: skip
    assert merged[MODEL]["rpm"] == 600.0  # the one limit, not twice it
    assert merged[MODEL]["sent"] == 75 and "workers" not in merged[MODEL]


def test_a_small_run_is_cut_evenly_across_the_actors() -> None:
    assert _size(400, 2) == 200  # one block each, not 256 to one and 144 to the other
    assert _size(3, 4) == 1
    assert _size(1_000_000, 2) == BLOCK  # full blocks while much is left
    assert _size(1_500, 2) == MIN_BLOCK  # then smaller, down to the floor
