"""DS2D gives greedy's tokens on 30 prompts of five kinds in fp16 and int4 (a file apart from fp32's so
that pytest-xdist's --dist loadfile runs them on both workers)."""
import pytest

from tests.test_ds2d_lossless import check_lossless


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_ds2d_gives_greedys_tokens(precision: str) -> None:
    check_lossless(precision)
