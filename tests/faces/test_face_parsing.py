"""BiSeNet face parsing: the released state-dict layout, the loader, and masks in frame coordinates.

The released `parsing_bisenet.pth` is not available offline: layout checks use the key names and
shapes written down from facexlib's facexlib/parsing/{bisenet,resnet}.py, loading uses saved random
state dicts, and the mask geometry uses a stand-in network whose class map is known.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

from idvid.faces import DlibFaceAnalyzer, align_face, face_template, transform_points
from idvid.faces.parsing import FACE_AND_HAIR_CLASSES, IMAGENET_MEAN, IMAGENET_STD, BiSeNet, FaceParser

# facexlib's BiSeNet(num_class=19): 191 state-dict entries, 13,300,416 parameters.
RELEASED_NUM_KEYS = 191
RELEASED_NUM_PARAMETERS = 13_300_416
RELEASED_SHAPES = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer2.0.downsample.1.running_mean": (128,),
    "cp.resnet.layer4.1.bn2.weight": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.num_batches_tracked": (),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.bias": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}
ALIGNED = 512
SKIN, HAIR, CLOTH = 1, 17, 16


@pytest.fixture(scope="module")
def released_network() -> BiSeNet:
    return BiSeNet()


@pytest.fixture(scope="module")
def astronaut_face():
    image = np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    return image, DlibFaceAnalyzer().detect(image)[0]


def tiny_parser(tmp_path, **kwargs) -> FaceParser:
    """A FaceParser of a width-8 BiSeNet, loaded through the real loader from a saved random state dict."""
    path = tmp_path / "tiny_bisenet.pth"
    torch.save(BiSeNet(width=8).state_dict(), path)
    return FaceParser(path, network=BiSeNet(width=8), **kwargs)


def known_class_map() -> np.ndarray:
    """Class map in the aligned crop: skin disc around the template's eyes-nose-mouth, hair above it,
    cloth along the bottom, background elsewhere."""
    template = face_template(ALIGNED)
    classes = np.zeros((ALIGNED, ALIGNED), np.int64)
    centre = template.mean(0)
    classes[: int(template[:2, 1].min()) - 40, 150:362] = HAIR
    classes[ALIGNED - 60 :, :] = CLOTH
    yy, xx = np.mgrid[:ALIGNED, :ALIGNED]
    classes[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < 90**2] = SKIN
    return classes


class KnownClassMap(nn.Module):
    """Stand-in parser network: one-hot logits of `known_class_map()`; keeps the input it was given."""

    def __init__(self):
        super().__init__()
        self.classes = torch.from_numpy(known_class_map())
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return torch.nn.functional.one_hot(self.classes, 19).permute(2, 0, 1)[None].float()


def test_default_architecture_has_the_released_state_dict_layout(released_network):
    state = released_network.state_dict()
    assert len(state) == RELEASED_NUM_KEYS
    assert sum(p.numel() for p in released_network.parameters()) == RELEASED_NUM_PARAMETERS
    assert {key: tuple(state[key].shape) for key in RELEASED_SHAPES} == RELEASED_SHAPES
    logits = released_network.eval()(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 19, 64, 64)


def test_loader_reads_a_saved_state_dict_into_the_released_architecture(tmp_path, released_network):
    torch.manual_seed(0)
    saved = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in released_network.state_dict().items()}
    path = tmp_path / "parsing_bisenet.pth"
    torch.save(saved, path)
    parser = FaceParser(path)
    assert isinstance(parser.network, BiSeNet) and not parser.network.training
    for key in RELEASED_SHAPES:
        torch.testing.assert_close(parser.network.state_dict()[key], saved[key])
    assert parser.face_classes == FACE_AND_HAIR_CLASSES


def test_missing_or_wrong_weights_fail_with_the_file_to_put_there(tmp_path):
    missing = tmp_path / "models" / "parsing_bisenet.pth"
    with pytest.raises(FileNotFoundError, match=r"parsing_bisenet\.pth.*facexlib.*releases") as err:
        FaceParser(missing)
    assert str(missing) in str(err.value)
    wrong = tmp_path / "other.pth"
    torch.save(BiSeNet(width=8).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"other\.pth is not facexlib's parsing_bisenet\.pth"):
        FaceParser(wrong)
    with pytest.raises(ValueError, match=r"face_classes.*\[0, 19\).*\[19\]"):
        FaceParser(wrong, network=BiSeNet(width=8), face_classes=[19])


def test_parse_mask_warps_the_kept_classes_back_onto_the_face(tmp_path, astronaut_face):
    image, face = astronaut_face
    parser = tiny_parser(tmp_path, face_classes=(SKIN,))
    stand_in = KnownClassMap()
    parser.network = stand_in
    mask = parser.parse_mask(image, face)

    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    # The network saw the aligned crop, ImageNet-normalised.
    crop, matrix = align_face(image, face.kps, ALIGNED)
    expected_input = torch.from_numpy(crop).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]
    expected_input = expected_input / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(stand_in.seen[0], expected_input)
    # Every frame pixel takes the class of the crop pixel it maps to (inverse warp), away from region edges.
    classes = known_class_map()
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    in_crop = transform_points(np.stack([xx.ravel(), yy.ravel()], 1), matrix).round().astype(int)
    inside = ((in_crop >= 0) & (in_crop < ALIGNED)).all(1)
    kept = np.zeros(len(in_crop), bool)
    kept[inside] = classes[in_crop[inside, 1], in_crop[inside, 0]] == SKIN
    skin = (classes == SKIN).astype(np.uint8)
    interior = cv2.erode(skin, np.ones((5, 5), np.uint8))[in_crop[inside, 1], in_crop[inside, 0]] == 1
    exterior = cv2.dilate(skin, np.ones((5, 5), np.uint8))[in_crop[inside, 1], in_crop[inside, 0]] == 0
    flat = mask.ravel()
    assert (flat[inside][interior] == 1).all() and (flat[inside][exterior] == 0).all()
    assert (flat[~inside] == 0).all()
    # ... and it sits on the detected face: nose and eyes inside, centroid within the face box.
    for x, y in face.kps[:3].round().astype(int):
        assert mask[y, x] == 1
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = face.box
    assert x0 < xs.mean() < x1 and y0 < ys.mean() < y1
    assert abs(int(mask.sum()) - int(kept.sum())) <= 0.02 * kept.sum()


def test_parse_mask_keeps_only_the_configured_classes(tmp_path, astronaut_face):
    image, face = astronaut_face
    masks = {}
    for classes in [(SKIN,), (SKIN, HAIR), FACE_AND_HAIR_CLASSES]:
        parser = tiny_parser(tmp_path, face_classes=classes)
        parser.network = KnownClassMap()
        masks[classes] = parser.parse_mask(image, face)
    skin_only, with_hair = masks[(SKIN,)], masks[(SKIN, HAIR)]
    assert (with_hair >= skin_only).all() and with_hair.sum() > skin_only.sum() * 1.2
    # Hair lies above the face: the added pixels are above the eyes.
    added_rows = np.nonzero(with_hair > skin_only)[0]
    assert added_rows.max() < face.kps[:2, 1].min()
    # ConsisID's face classes keep skin and hair but never cloth.
    np.testing.assert_array_equal(masks[FACE_AND_HAIR_CLASSES], with_hair)
