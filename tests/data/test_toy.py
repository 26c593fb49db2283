"""The toy identity set (idvid.toy): distinct faces, a deterministic build, a train/held-out split by identity."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from omegaconf import OmegaConf

import idvid.toy as toy
from idvid import config_packages
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4


@pytest.fixture(scope="module")
def photos():
    return toy.toy_photos()


def test_photos_are_many_distinct_faces(photos):
    lfw = [name for name in photos if name.startswith("lfw-")]
    assert len(lfw) == toy.LFW_FACES and {"astronaut", "t1"} <= set(photos)
    flat = np.stack([photos[name][..., 0].ravel() for name in lfw]).astype(np.float32)
    distances = np.abs(flat[:, None] - flat[None]).mean(-1) + np.eye(len(lfw)) * 255
    assert distances.min() > 1.0  # no two crops are the same picture
    assert set(toy.HELDOUT_IDS) - {"t1-5"} <= set(lfw)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, photos):
    """The real builder run twice on two faces, one held out (lfw-005) and one trained on (lfw-000)."""
    subset = {name: photos[name] for name in ("lfw-000", "lfw-005")}
    original = toy.toy_photos
    toy.toy_photos = lambda: subset
    try:
        return [toy.build_toy(tmp_path_factory.mktemp(f"toy{i}")) for i in range(2)]
    finally:
        toy.toy_photos = original


@pytest.mark.slow
def test_build_is_deterministic(two_builds):
    first, second = two_builds
    assert (first / "manifest.jsonl").read_text() == (second / "manifest.jsonl").read_text()
    for a, b in zip(read_manifest(first / "manifest.jsonl"), read_manifest(second / "manifest.jsonl")):
        np.testing.assert_array_equal(read_mp4(a["video"]), read_mp4(b["video"]))
        annotations_a = load_annotations(a["annotations"])
        annotations_b = load_annotations(b["annotations"])
        for key in ("boxes", "kps", "valid", "masks", "embeddings", "reference_faces"):
            np.testing.assert_array_equal(annotations_a[key], annotations_b[key], err_msg=key)


@pytest.mark.slow
def test_train_and_heldout_identities_never_overlap(two_builds):
    folder = two_builds[0]
    train = {e["identity"] for e in read_manifest(folder / "train.jsonl")}
    heldout = {e["identity"] for e in read_manifest(folder / "heldout.jsonl")}
    assert train == {"lfw-000"} and heldout == {"lfw-005"}
    everything = read_manifest(folder / "manifest.jsonl")
    assert len(everything) == 2 and not train & set(toy.HELDOUT_IDS)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown toy split 'test'"):
        toy.toy_manifest("test", tmp_path)


@pytest.mark.slow
def test_frames_show_the_face_as_its_reference_does(two_builds):
    """Faces on white, aligned like their references, under a small move: a frame is closer to its own
    reference than to the other face's (the copy the low-frequency path can learn at toy scale)."""
    from idvid.data.dataset import IdentityVideoDataset

    dataset = IdentityVideoDataset(two_builds[0] / "manifest.jsonl", num_frames=3, frame_stride=4, height=64, width=64)
    first, second = dataset[0], dataset[1]
    for item, other in ((first, second), (second, first)):
        mask = item["face_mask"][0]
        frame = item["video"][0]
        assert frame[:, mask[0] == 0].mean() > 0.95  # white outside the face

        own, others = (
            float(((frame - ref) ** 2 * mask).sum() / mask.sum()) for ref in (item["ref_image"], other["ref_image"])
        )
        assert own < others


def test_unknown_toy_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown toy set 'big'"):
        toy.toy_manifest("train", tmp_path, toy_set="big")


def test_the_small_set_holds_two_held_out_faces(photos):
    assert set(toy.SMALL_PHOTOS) <= set(photos)
    assert set(toy.SMALL_PHOTOS) & set(toy.HELDOUT_IDS) == {"lfw-005", "lfw-015"}


def test_the_default_scale_is_toy_the_codec_backbone_on_the_small_set():
    """Composing builds nothing (the manifest stays an interpolation); the clip settings are the toy set's."""
    toy_scale = config_packages.compose("config", ["experiment=plan_c"])
    assert toy_scale.backbone.codec.kind == "haar" and toy_scale.backbone.vae is None
    data = OmegaConf.to_container(toy_scale.data)
    assert data.pop("manifest") == "${idvid.toy_manifest:train,small}"
    full = OmegaConf.to_container(config_packages.compose("config", ["data=toy"]).data)
    assert full.pop("manifest") == "${idvid.toy_manifest:train}" and data == full
    assert toy_scale.trainer.max_steps == 1000 and toy_scale.model.validation.guidance_scale == 1.0
    tiny = config_packages.compose("config", ["experiment=plan_c", "scale=tiny"])
    assert tiny.backbone.get("codec") is None and tiny.backbone.vae is not None
    assert tiny.data.manifest is None and tiny.trainer.max_steps == 200  # the bundled demo
    # The command line wins over the scale, and an experiment's own data over the scale's.
    wan = config_packages.compose("config", ["experiment=plan_c", "backbone=wan_toy", "trainer.max_steps=3"])
    assert wan.backbone.name == "wan" and wan.backbone.codec.kind == "haar" and wan.trainer.max_steps == 3
    if importlib.util.find_spec("idvid_magicme"):  # an experiment with its own data
        magicme = config_packages.compose("config", ["experiment=magicme_id"])
        assert magicme.data.manifest is None  # its one person of the demo, not the toy set


def test_a_scaled_camera_move_keeps_its_middle():
    from idvid.demo import random_camera

    camera = random_camera(np.random.default_rng(0))
    assert toy.MOTION_AMOUNT < 1 and camera.scaled(1.0) == camera
    still = camera.scaled(0.0)
    for name in ("fill", "pan_x", "pan_y", "roll_deg"):
        start, end = getattr(still, name)
        assert start == pytest.approx(end) == pytest.approx(sum(getattr(camera, name)) / 2)


LEARNING_STEPS = 100


@pytest.mark.slow
@pytest.mark.needs_plugin("idvid_consisid")
def test_a_short_toy_run_resembles_held_out_faces_better_than_the_untrained_model(tmp_path_factory):
    """The toy ablation's own path (fit, sample the held-out references, pixel_identity) at a small budget,
    on the small toy set (the faces of scale=toy: 7 trained on, lfw-005 and lfw-015 held out).

    Trained and untrained (lr 0: the same initial weights, the same sampling noise) are scored on identities
    neither has seen: the trained model's face region must correlate with the reference far better.
    """
    from idvid.verbs.ablate import ablate

    folder = toy.build_toy(tmp_path_factory.mktemp("toy_learning"), toy_set="small")
    out = tmp_path_factory.mktemp("toy_learning_runs")

    def score(name: str, steps: int, *fit_overrides: str) -> dict[str, float]:
        overrides = ["sweep=consisid_toy", "experiments=[plan_c]", f"out={out / name}"]
        overrides += ["evaluate.metrics=[pixel_identity]", f"eval_set.manifest={folder / 'heldout.jsonl'}"]
        overrides += ["eval_set.count=2", "eval_set.seeds=[0]"]
        cfg = OmegaConf.to_container(config_packages.compose("ablate", overrides), resolve=True)
        cfg["fit_overrides"] += [
            f"data.manifest={folder / 'train.jsonl'}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"callbacks.checkpoint.every_n_train_steps={steps}",
            *fit_overrides,
        ]
        result = ablate(cfg)["plan_c"]
        assert result["status"] == "ok", result
        return result["metrics"]

    trained = score("trained", LEARNING_STEPS)
    untrained = score("untrained", 1, "optimizer.lr=0")
    print(f"held-out pixid: trained {trained['pixid']:.3f}, untrained {untrained['pixid']:.3f}")
    assert trained["pixid"] > untrained["pixid"] + 0.1
    assert trained["pixid_low"] > untrained["pixid_low"] + 0.1
