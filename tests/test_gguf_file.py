"""Reading the GGUF file: the engine's faster paths give exactly what the gguf library gives."""
import gguf
import numpy as np
import pytest

from harness.engine.gguf_file import GGUFFile, dequantized, model_path, read_gguf, rows_dequantized


@pytest.fixture(scope="module")
def file() -> GGUFFile:
    return read_gguf(model_path())


def test_fields_and_tensors_are_the_librarys(file: GGUFFile) -> None:
    reader = gguf.GGUFReader(model_path())
    assert file.metadata == {key: field.contents() for key, field in reader.fields.items()}
    assert [(t.name, t.tensor_type, t.data_offset) for t in file.tensors] == \
           [(t.name, t.tensor_type, t.data_offset) for t in reader.tensors]
    assert all(np.array_equal(ours.data, theirs.data) for ours, theirs in zip(file.tensors, reader.tensors))


def test_every_tensor_dequantizes_bit_for_bit_as_gguf_quants(file: GGUFFile) -> None:
    kinds = {t.tensor_type for t in file.tensors}
    assert kinds == {gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32}
    for tensor in file.tensors:
        ours = dequantized(tensor)
        assert ours.dtype == np.float32 and ours.flags.writeable
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(tensor.data, tensor.tensor_type), err_msg=tensor.name)


def test_rows_in_chunks_are_the_whole_tensor(file: GGUFFile) -> None:
    embedding = next(t for t in file.tensors if t.name == "token_embd.weight")
    chunks = [c.numpy() for c in rows_dequantized(embedding, 10_000)]
    assert [len(c) for c in chunks] == [10_000] * 4 + [9152]
    np.testing.assert_array_equal(np.concatenate(chunks), dequantized(embedding))


class _PartsPackage:
    """A model package that joins its parts in place, as the Gemma package does, and checks
    that nobody can see the cache's model file until it is whole."""

    MODEL_NAME = "model.gguf"

    def __init__(self, cache) -> None:
        self.cache, self.joined = cache, 0

    def assemble(self, output):
        if output.exists():
            assert output.read_bytes() == b"part1part2"
            return output
        assert not (self.cache / self.MODEL_NAME).exists()
        with output.open("wb") as out:
            out.write(b"part1")
            out.flush()
            assert not (self.cache / self.MODEL_NAME).exists(), "a partial model is visible"
            out.write(b"part2")
        self.joined += 1
        return output


def test_a_model_joined_from_parts_appears_in_the_cache_whole_and_once(tmp_path, monkeypatch) -> None:
    from harness.engine import gguf_file

    monkeypatch.setattr(gguf_file, "_CACHE", tmp_path)
    package = _PartsPackage(tmp_path)
    assert gguf_file._assembled(package).read_bytes() == b"part1part2"
    assert gguf_file._assembled(package) == tmp_path / "model.gguf"
    assert package.joined == 1 and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
