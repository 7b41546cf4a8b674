import hashlib
import json
import pickle

import pytest
import torch

from nmt.checkpoint import FORMAT_VERSION, load_checkpoint, restore, save_checkpoint
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
    assert torch.equal(
        optimizer.state_dict()["state"][0]["exp_avg"],
        other_optimizer.state_dict()["state"][0]["exp_avg"],
    )
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_model_only_loads_the_same_model_tensors_and_nothing_else(tmp_path):
    """Translation's load copies only the model's tensors out of the file, not the optimizer's."""
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.tensor([[4, 5, 3]]), torch.tensor([3]), torch.tensor([[2, 4]]))[0].sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "best", model, {"step": 3}, optimizer)
    everything, _ = load_checkpoint(tmp_path / "best")
    weights, meta = load_checkpoint(tmp_path / "best", model_only=True)
    assert meta["step"] == 3
    assert set(weights) == {key for key in everything if key.startswith("model.")}
    assert any(key.startswith("optimizer.") for key in everything)
    [path] = tmp_path.glob("best.*.safetensors")
    path.unlink()  # the tensors are copies: they outlive the file (a newer best replaces it)
    other = tiny_model(seed=9)
    restore(weights, meta, other)
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


@pytest.mark.parametrize("model_only", [False, True])
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty"])
def test_damaged_weights_are_detected(tmp_path, model_only, damage):
    save_checkpoint(tmp_path / "best", tiny_model(), {})
    [path] = tmp_path.glob("best.*.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[-1] ^= 0xFF
    else:
        del data[len(data) // 2 if damage == "truncated" else 0 :]
    path.write_bytes(bytes(data))
    with pytest.raises(NmtError, match="damaged"):
        load_checkpoint(tmp_path / "best", model_only=model_only)


def _vouch_for(path, data: bytes) -> None:
    """Write `data` as checkpoint `path`'s weights with a JSON whose size and SHA-256 match."""
    path.with_name(f"{path.name}.safetensors").write_bytes(data)
    path.with_name(f"{path.name}.json").write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "weights_file": f"{path.name}.safetensors",
                "weights_bytes": len(data),
                "weights_sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    )


@pytest.mark.parametrize("model_only", [False, True])
def test_a_pickle_is_never_executed(tmp_path, model_only):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Exploit())
    (tmp_path / "evil.safetensors").write_bytes(data)
    (tmp_path / "evil.json").write_text('{"weights_bytes": 0}')
    with pytest.raises(NmtError):
        load_checkpoint(tmp_path / "evil", model_only=model_only)
    assert not marker.exists()
    # Even with a matching size and hash, a pickle is not a safetensors file.
    _vouch_for(tmp_path / "evil", data)
    with pytest.raises(NmtError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "evil", model_only=model_only)
    assert not marker.exists()


@pytest.mark.parametrize("model_only", [False, True])
def test_a_header_pointing_outside_its_file_is_refused(tmp_path, model_only):
    """Bytes whose size and hash the JSON vouches for, but whose safetensors header lies."""
    header = json.dumps({"model.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}})
    data = len(header).to_bytes(8, "little") + header.encode() + bytes(16)
    _vouch_for(tmp_path / "odd", data)
    with pytest.raises(NmtError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "odd", model_only=model_only)


def test_metadata_cannot_point_outside_the_checkpoint_folder(tmp_path):
    (tmp_path / "inner").mkdir()
    save_checkpoint(tmp_path / "other", tiny_model(), {})
    meta = json.loads((tmp_path / "other.json").read_text())
    meta["weights_file"] = "../" + meta["weights_file"]
    (tmp_path / "inner" / "x.json").write_text(json.dumps(meta))
    with pytest.raises(NmtError, match="missing"):
        load_checkpoint(tmp_path / "inner" / "x")


class Killed(BaseException):
    """Stands in for the process dying (kill -9) at a chosen write."""


@pytest.mark.parametrize("dies_at", [0, 1])  # while writing the weights, or just before the JSON
def test_a_crash_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, dies_at):
    import nmt.files as files

    old, new = tiny_model(seed=1), tiny_model(seed=2)
    save_checkpoint(tmp_path / "last", old, {"step": 1})
    real_write, writes = files.atomic_write_bytes, []

    def dying_write(path, data):
        writes.append(path)
        if len(writes) - 1 == dies_at:
            if dies_at == 0:  # half the bytes in the temporary file, then death
                (path.parent / f".{path.name}.partial.tmp").write_bytes(data[: len(data) // 2])
            raise Killed
        real_write(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", dying_write)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path / "last", new, {"step": 2})
    monkeypatch.setattr(files, "atomic_write_bytes", real_write)
    tensors, meta = load_checkpoint(tmp_path / "last")
    assert meta["step"] == 1
    for key, value in old.state_dict().items():
        assert torch.equal(tensors[f"model.{key}"], value)
    # The next save replaces it whole and leaves one weights file (a crash's temporary file
    # is for training to clear when it resumes: test_resume_before_the_first_checkpoint...).
    save_checkpoint(tmp_path / "last", new, {"step": 3})
    assert load_checkpoint(tmp_path / "last")[1]["step"] == 3
    assert len(list(tmp_path.glob("last.*.safetensors"))) == 1


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from nmt.files import atomic_write_text

    atomic_write_text(tmp_path / "out.txt", "hello\n")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("point", ["chmod", "fsync", "replace"])
def test_an_atomic_write_that_fails_at_any_point_leaves_the_old_file_whole(
    tmp_path, monkeypatch, point, fault
):
    """Interrupted or refused inside the write (after the temporary file is made, after its
    bytes are written, at the rename): the old file is untouched and no temporary file stays."""
    import os

    from nmt.files import atomic_write_text

    target = tmp_path / "out.txt"
    target.write_text("old\n")

    def failing(*args, **kwargs):
        raise fault

    monkeypatch.setattr(os, point, failing)
    with pytest.raises(type(fault)):
        atomic_write_text(target, "new\n" * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_format_1_checkpoints_load_and_average_into_the_current_format(tmp_path):
    from nmt.checkpoint import average_checkpoints

    for seed in (1, 2):  # as session 1 wrote them: weights beside the JSON, same name
        save_checkpoint(tmp_path / f"old{seed}", tiny_model(seed=seed), {"step": seed})
        meta = json.loads((tmp_path / f"old{seed}.json").read_text())
        [weights] = tmp_path.glob(f"old{seed}.*.safetensors")
        weights.rename(tmp_path / f"old{seed}.safetensors")
        meta.update(format_version=1)
        del meta["weights_file"]
        (tmp_path / f"old{seed}.json").write_text(json.dumps(meta))
    average_checkpoints([tmp_path / "old1", tmp_path / "old2"], tmp_path / "averaged")
    tensors, meta = load_checkpoint(tmp_path / "averaged")
    assert meta["format_version"] == FORMAT_VERSION
    one, two = load_checkpoint(tmp_path / "old1")[0], load_checkpoint(tmp_path / "old2")[0]
    key = next(k for k in tensors if k.startswith("model."))
    torch.testing.assert_close(tensors[key], (one[key] + two[key]) / 2)
