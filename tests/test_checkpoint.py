import pickle

import pytest
import torch

from nmt.checkpoint import load_checkpoint, restore, save_checkpoint
from nmt.errors import NmtError
from conftest import tiny_model


def test_round_trip_with_optimizer_and_rng(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.tensor([[4, 5, 3]]), torch.tensor([3]), torch.tensor([[2, 4]]))[0].sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "last", model, {"step": 7}, optimizer)
    expected_draw = torch.rand(3)

    other = tiny_model(seed=9)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=0.5)
    tensors, meta = load_checkpoint(tmp_path / "last")
    restore(tensors, meta, other, other_optimizer)
    assert meta["step"] == 7
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_optimizer.param_groups[0]["lr"] == 0.01
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"],
                       other_optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_damaged_weights_are_detected(tmp_path):
    save_checkpoint(tmp_path / "best", tiny_model(), {})
    path = tmp_path / "best.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(NmtError, match="damaged"):
        load_checkpoint(tmp_path / "best")


def test_a_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Exploit()))
    (tmp_path / "evil.json").write_text('{"weights_bytes": 0}')
    with pytest.raises(NmtError):
        load_checkpoint(tmp_path / "evil")
    assert not marker.exists()
    # Even with a matching size and hash, a pickle is not a safetensors file.
    import hashlib, json
    data = (tmp_path / "evil.safetensors").read_bytes()
    (tmp_path / "evil.json").write_text(json.dumps(
        {"weights_bytes": len(data), "weights_sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(NmtError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "evil")
    assert not marker.exists()


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from nmt.checkpoint import atomic_write_text

    atomic_write_text(tmp_path / "out.txt", "hello\n")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left
