import numpy as np
import pytest

from searchrl.records import PromptTask, Trajectory


def _traj() -> Trajectory:
    return Trajectory(
        "t/0",
        "t",
        0,
        4,
        3,
        np.array([1, 2, 3], np.int32),
        np.array([5, 6, 7, 8], np.int32),
        np.array([1, 0, 0, 1], np.uint8),
        np.array([-0.5, 0, 0, -1.25], np.float32),
        1.5,
        {"cem": 1.0},
        "eos",
        "stage1",
    )


def test_trajectory_roundtrip_through_bytes():
    enc = _traj().encode()
    # Redis hands fields back as bytes keys/values
    back = Trajectory.decode({k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in enc.items()})
    assert back.traj_id == "t/0" and back.policy_version == 3 and back.reward == 1.5
    assert back.response_ids.tolist() == [5, 6, 7, 8] and back.loss_mask.tolist() == [1, 0, 0, 1]
    assert back.logprobs.tolist() == [-0.5, 0, 0, -1.25] and back.metrics == {"cem": 1.0}


def test_malformed_trajectory_is_a_value_error():
    enc = _traj().encode()
    enc["loss_mask"] = b"\x01"
    with pytest.raises(ValueError, match="loss_mask/logprobs: length differs"):
        Trajectory.decode(enc)
    with pytest.raises(ValueError, match="meta"):
        Trajectory.decode({"prompt_ids": b""})


def test_prompt_task_roundtrip():
    t = PromptTask("id", "q?", ["a", "b"], 4, "r1s-stage1", 2, "stage1")
    assert PromptTask.decode({b"meta": t.encode()["meta"].encode()}) == t
    with pytest.raises(ValueError, match="malformed"):
        PromptTask.decode({"meta": '{"task_id": "x"}'})
