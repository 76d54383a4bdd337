import pytest

from extract.store.ids import escape_id, unescape_id


@pytest.mark.parametrize(
    "video_id",
    ["v_ZNVhz7ctTq0", "a/b/c", "with space", "unicode é 中文 🎬", ".hidden", "..", "100%", "a%2Fb", "-dash_.x"],
)
def test_video_ids_round_trip_through_hdf5_names(video_id: str) -> None:
    name = escape_id(video_id)
    assert "/" not in name and not name.startswith(".")
    assert name.isascii()
    assert unescape_id(name) == video_id


def test_distinct_ids_never_collide() -> None:
    ids = ["a/b", "a%2Fb", "a_b", "a b", "A/b"]
    assert len({escape_id(i) for i in ids}) == len(ids)


def test_empty_id_is_refused() -> None:
    with pytest.raises(ValueError):
        escape_id("")
