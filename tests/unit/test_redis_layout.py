from __future__ import annotations

from torl.common.redis_layout import RunKeys, format_version, parse_version, version_key
from torl.v1 import common_pb2


def test_keys_share_the_run_prefix() -> None:
    k = RunKeys("r1")
    assert [k.prompts, k.trajectories, k.dead, k.version, k.state] == [
        "torl:r1:prompts",
        "torl:r1:trajectories",
        "torl:r1:dead",
        "torl:r1:version",
        "torl:r1:state",
    ]


def test_version_round_trip_and_order() -> None:
    v = common_pb2.WeightVersion(incarnation=3, step=17)
    assert format_version(v) == "3:17"
    assert parse_version(b"3:17") == v
    assert parse_version(None) == common_pb2.WeightVersion()
    # A resumed learner (incarnation 4, older step) outranks a dead one's push (incarnation 3).
    assert version_key(parse_version("4:10")) > version_key(v)
