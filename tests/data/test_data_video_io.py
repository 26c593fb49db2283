"""Decoding turns frames the way players show them: the stream's display matrix (phone videos) is applied."""

from __future__ import annotations

import av
import numpy as np
import pytest

from idvid.data.video_io import iter_frames, read_mp4, write_mp4


def marked_frames(num_frames: int = 3, height: int = 32, width: int = 48) -> np.ndarray:
    """Black frames with a white block in the top-left corner: where it lands shows how a frame was turned."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[:, :8, :8] = 255
    return frames


def bright_corner(frame: np.ndarray) -> str:
    height, width = frame.shape[:2]
    corners = {
        "top-left": frame[:4, :4],
        "top-right": frame[:4, width - 4 :],
        "bottom-left": frame[height - 4 :, :4],
        "bottom-right": frame[height - 4 :, width - 4 :],
    }
    return max(corners, key=lambda name: corners[name].mean())


@pytest.mark.parametrize(
    "degrees, shape, corner",
    [
        (0, (32, 48), "top-left"),
        (-90, (48, 32), "top-right"),  # a phone held upright: turned a quarter clockwise
        (90, (48, 32), "bottom-left"),
        (180, (32, 48), "bottom-right"),
    ],
)
def test_every_decode_applies_the_display_rotation(tmp_path, degrees, shape, corner):
    path = tmp_path / f"rotated{degrees}.mp4"
    write_mp4(path, marked_frames(), display_rotation=degrees)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation % 360 == degrees % 360  # the file says what the test means
    video = read_mp4(path)
    assert video.shape == (3, *shape, 3)
    assert [bright_corner(frame) for frame in video] == [corner] * 3
    streamed = list(iter_frames(path))
    assert all(np.array_equal(a, b) for a, b in zip(streamed, video)) and len(streamed) == 3
    assert all(frame.flags["C_CONTIGUOUS"] for frame in streamed)  # cv2 and torch.from_numpy need it


@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
def test_a_mirroring_display_matrix_is_applied_after_the_turn(tmp_path, degrees):
    # frame.rotation reads a mirror alone as -180; a half turn would put faces upside down.
    frames = marked_frames()
    frames[:, -8:, :8] = 128  # a grey block bottom-left too, so that turns and mirrors all differ
    write_mp4(tmp_path / "mirrored.mp4", frames, display_rotation=degrees, display_mirror=True)
    expected = np.stack([np.fliplr(np.rot90(frame, degrees // 90)) for frame in frames])
    video = read_mp4(tmp_path / "mirrored.mp4")
    assert video.shape == expected.shape
    assert np.abs(video.astype(int) - expected.astype(int)).mean() < 3  # equal up to the codec's loss


def test_a_video_without_a_display_matrix_is_read_as_written(tmp_path):
    frames = marked_frames()
    write_mp4(tmp_path / "plain.mp4", frames)
    video = read_mp4(tmp_path / "plain.mp4")
    assert video.shape == frames.shape and [bright_corner(f) for f in video] == ["top-left"] * 3
