"""Detection, keypoints, alignment, masks and tracking on clips rendered from real photos."""

from __future__ import annotations

import numpy as np

from idvid.data.video_io import read_mp4
from idvid.demo import FRAME_SIZE
from idvid.faces import ARCFACE_TEMPLATE_112, align_face, face_template, transform_points
from idvid.preprocess.annotate import ClipSettings, annotate_clip, track_frames
from idvid.preprocess.filters import head_pose_deg, main_track, rotation_deg
from idvid.preprocess.tracking import TrackingSettings, analyze_video, assign_tracks

from .conftest import PAN, CountingAnalyzer


def expected_centre_x(t: float) -> float:
    """Where render_frames puts the face centre horizontally at time t in [0, 1] for the PAN camera."""
    ease = 3 * t**2 - 2 * t**3
    return FRAME_SIZE / 2 + (PAN.pan_x[0] + (PAN.pan_x[1] - PAN.pan_x[0]) * ease) * FRAME_SIZE


def test_detection_keypoints_alignment_and_masks_on_a_panning_clip(clip_library):
    video = clip_library / "astronaut.mp4"
    analysis = analyze_video(video, CountingAnalyzer(), every=1, tracking=TrackingSettings())
    frames = read_mp4(video)
    assert analysis.num_frames == len(frames) == 8 and analysis.track_ids() == [0]
    assert list(analysis.frame) == list(range(8))  # one face in every frame
    widths = analysis.box[:, 2] - analysis.box[:, 0]
    # The camera puts the face at 45% of the frame width, moving right along the pan.
    np.testing.assert_allclose(widths, 0.45 * FRAME_SIZE, rtol=0.2)
    centres = (analysis.box[:, 0] + analysis.box[:, 2]) / 2
    times = np.linspace(0, 1, 8)
    np.testing.assert_allclose(centres, [expected_centre_x(t) for t in times], atol=0.08 * FRAME_SIZE)
    assert np.all(np.diff(centres) >= -2)
    x0, y0, x1, y1 = (analysis.box[:, i, None] for i in range(4))
    kps_x, kps_y = analysis.kps[..., 0], analysis.kps[..., 1]
    assert ((kps_x > x0) & (kps_x < x1) & (kps_y > y0) & (kps_y < y1 + 0.1 * widths[:, None])).all()

    faces = track_frames(analysis, 0, 0, 7, max_gap=5)
    arrays = annotate_clip(frames, faces, ClipSettings(num_frames=4, frame_stride=2), align_size=512)
    assert str(arrays["mask_source"]) == "landmark_hull"
    for t in range(8):
        mask = arrays["masks"][t]
        ys, xs = np.nonzero(mask)
        box = analysis.box[t]
        # The hull covers the face: its centroid lies in the box and it fills a good part of it.
        assert box[0] < xs.mean() < box[2] and box[1] < ys.mean() < box[3]
        assert mask.sum() > 0.5 * (box[2] - box[0]) * (box[3] - box[1])
    # The aligned 512 crop puts the reference frame's keypoints on the template.
    reference = int(arrays["reference_frame"])
    assert reference in arrays["clip_frames"]
    assert arrays["reference_crop"].shape == (512, 512, 3)
    crop, matrix = align_face(frames[reference], faces["kps"][reference], 512)
    np.testing.assert_array_equal(arrays["reference_crop"], crop)
    # A similarity cannot match every face's proportions exactly (dlib's mouth corners sit wider than
    # ArcFace's): each keypoint lands within a quarter of the template's eye distance, the eyes closer.
    template = face_template(512)
    eye_distance = np.linalg.norm(template[1] - template[0])
    residual = np.linalg.norm(transform_points(faces["kps"][reference], matrix) - template, axis=1)
    assert residual.max() < 0.25 * eye_distance and residual[:2].max() < 0.12 * eye_distance, residual
    # Training clip: 4 frames at stride 2; the cross-face pool is every face frame after it.
    np.testing.assert_array_equal(arrays["clip_frames"], [0, 2, 4, 6])
    np.testing.assert_array_equal(arrays["cross_face_frames"], [7])


def test_tracker_keeps_the_six_people_of_t1_apart(clip_library, photos, photo_faces):
    analyzer = CountingAnalyzer()
    analysis = analyze_video(clip_library / "group.mp4", analyzer, every=1, tracking=TrackingSettings())
    # Who each detection is: the photo face whose embedding it matches best.
    photo_embeddings = np.stack([analyzer.inner.embed(photos["t1"], f) for f in photo_faces["t1"]])
    person = np.argmax(analysis.embedding @ photo_embeddings.T, axis=1)
    tracks = analysis.track_ids()
    assert len(tracks) >= 5  # HOG finds at least five of the six at this size
    people_of_track = {t: set(person[analysis.track == t]) for t in tracks}
    assert all(len(people) == 1 for people in people_of_track.values()), people_of_track
    assert len({next(iter(p)) for p in people_of_track.values()}) == len(tracks)  # one track per person
    for t in tracks:  # each person is followed through most of the 6 frames, across missed detections
        assert len(np.unique(analysis.frame[analysis.track == t])) >= 4


def test_tracker_links_by_identity_when_boxes_jump_and_splits_when_faces_differ():
    same, other = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    frames = np.array([0, 0, 1, 1, 2])
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [80, 80, 90, 90], [1, 1, 11, 11]], np.float32)
    # Frame 1: person A jumped far away (no overlap), a stranger stands exactly where A was.
    embeddings = np.stack([same, other, other, same, same])
    tracks = assign_tracks(frames, boxes, embeddings, TrackingSettings(), every=1)
    assert tracks[0] == tracks[3] == tracks[4]  # A: re-identified without overlap
    assert tracks[1] == tracks[2] != tracks[0]  # B: the overlapping box is not A, since the face differs


def test_head_pose_from_keypoints():
    assert rotation_deg(ARCFACE_TEMPLATE_112) < 1.0
    centre = ARCFACE_TEMPLATE_112.mean(0)
    angle = np.radians(40)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (ARCFACE_TEMPLATE_112 - centre) @ rotate.T + centre
    yaw, pitch, roll = head_pose_deg(rolled)
    assert abs(roll - 40) < 0.5 and abs(yaw) < 1 and abs(pitch) < 1
    turned = ARCFACE_TEMPLATE_112.copy()
    turned[2, 0] += 12  # the nose moves sideways when the head turns
    assert 25 < head_pose_deg(turned)[0] < 45


def test_main_track_is_the_largest_longest_face(clip_library):
    analysis = analyze_video(clip_library / "t1-2.mp4", CountingAnalyzer(), every=2, tracking=TrackingSettings())
    assert list(analysis.sampled) == [0, 2, 4, 6]
    main = main_track(analysis)
    main_widths = analysis.box[analysis.track == main, 2] - analysis.box[analysis.track == main, 0]
    assert main_widths.min() > 0.3 * FRAME_SIZE
    # Frames between detections are interpolated, and marked as not detected.
    faces = track_frames(analysis, main, 0, 6, max_gap=10)
    assert faces["valid"].all() and list(np.flatnonzero(faces["detected"])) == [0, 2, 4, 6]
    np.testing.assert_allclose(faces["boxes"][1], (faces["boxes"][0] + faces["boxes"][2]) / 2, atol=1e-4)
