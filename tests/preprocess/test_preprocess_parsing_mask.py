"""preprocess with a face parser: masks come from it (`mask_source` bisenet), its weights are part of the
record key, and a configured but missing weights file stops the run before any video."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from idvid.cli import main
from idvid.data.manifest import load_annotations
from idvid.faces.parsing import BiSeNet, FaceParser
from idvid.preprocess import MaskSettings, Preprocessor
from idvid.verbs.preprocess import mask_settings

from .conftest import CountingAnalyzer, make_raw, settings_for


class CentreDiscNetwork(nn.Module):
    """Stand-in parser network: skin (class 1) in a disc at the aligned crop's centre, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.2 * height) ** 2
        logits = torch.zeros(x.shape[0], 19, height, width)
        logits[:, 1][:, disc] = 1.0
        logits[:, 0][:, ~disc] = 1.0
        return logits


def stand_in_parser(weights) -> FaceParser:
    """A FaceParser loaded through the real loader (tiny BiSeNet), then given the stand-in network."""
    torch.save(BiSeNet(width=8).state_dict(), weights)
    parser = FaceParser(weights, network=BiSeNet(width=8), face_classes=(1,))
    parser.network = CentreDiscNetwork()
    return parser


def test_parser_masks_are_recorded_and_their_weights_are_part_of_the_key(clip_library, tmp_path):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut"])
    weights = tmp_path / "parsing_bisenet.pth"
    parser = stand_in_parser(weights)
    parsed = settings_for(raw, tmp_path / "out", mask=MaskSettings(parser_weights=weights, face_classes=(1,)))
    counting = CountingAnalyzer()
    Preprocessor(parsed, counting, parser).run()
    record = json.loads((tmp_path / "out" / "records" / "astronaut.json").read_text())
    assert record["status"] == "kept" and record["mask_source"] == "bisenet"
    arrays = load_annotations(tmp_path / "out" / record["annotations"])
    assert str(arrays["mask_source"]) == "bisenet"
    valid = np.flatnonzero(arrays["valid"])
    for t in valid:  # the disc, warped back, lies on the tracked face
        ys, xs = np.nonzero(arrays["masks"][t])
        x0, y0, x1, y1 = arrays["boxes"][t]
        assert len(xs) > 0.3 * (x1 - x0) * (y1 - y0) and x0 < xs.mean() < x1 and y0 < ys.mean() < y1

    # Same settings: reused. New weights file (size or mtime) or no parser: masks redone, detector not re-run.
    detections = counting.detect_calls
    assert Preprocessor(parsed, counting, parser).run()["reused"] == 1
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert Preprocessor(parsed, counting, parser).run()["reused"] == 0
    fallback = dataclasses.replace(parsed, mask=MaskSettings())
    assert Preprocessor(fallback, counting).run()["reused"] == 0
    assert counting.detect_calls == detections
    record = json.loads((tmp_path / "out" / "records" / "astronaut.json").read_text())
    assert record["mask_source"] == "landmark_hull"
    hull = load_annotations(tmp_path / "out" / record["annotations"])["masks"]
    assert not np.array_equal(hull[valid], arrays["masks"][valid])


def test_missing_parser_weights_stop_the_run_before_any_video(clip_library, tmp_path, capsys):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut"])
    missing = tmp_path / "models" / "parsing_bisenet.pth"
    with pytest.raises(SystemExit):  # Hydra prints the error and exits with status 1
        main(["preprocess", f"data.raw={raw}", f"data.out={tmp_path / 'out'}", f"mask.parser_weights={missing}"])
    err = capsys.readouterr().err
    assert re.search(rf"face-parsing weights not found: {re.escape(str(missing))}; put facexlib's parsing_bisenet", err)
    assert not (tmp_path / "out" / "records").exists()


def test_mask_settings_from_the_config_group():
    assert mask_settings({}) == mask_settings({"parser_weights": None}) == MaskSettings()
    weights = mask_settings({"parser_weights": "~/models/parsing_bisenet.pth", "face_classes": [1, 17]})
    assert weights.parser_weights == Path("~/models/parsing_bisenet.pth").expanduser()
    assert weights.face_classes == (1, 17) and weights.device == "cpu"
