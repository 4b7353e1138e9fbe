"""``edge-agent draw``: the camera's picture with zones and masks drawn, for a technician."""

from __future__ import annotations

import json

import cv2
import numpy as np

from agent.cli import main
from agent.tools.draw import OBJECT_MASK, ZONE
from tests.conftest import MEDIA

PRIVACY = [[0.75, 0.1], [1.0, 0.1], [1.0, 0.5], [0.75, 0.5]]
LANE = [[0.3, 0.35], [0.55, 0.3], [1.0, 0.75], [1.0, 1.0], [0.45, 1.0]]
IGNORE = [[0.55, 0.3], [0.75, 0.3], [0.75, 0.45], [0.55, 0.45]]


def config(tmp_path, source):
    cam = {"id": "street", "source": str(source), "privacy_masks": [PRIVACY],
           "zones": [{"name": "lane", "polygon": LANE, "labels": ["car"]}],
           "required_zones": ["lane"], "filters": {"car": {"masks": [IGNORE]}}}  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps({"node_id": "n", "commune_id": "c", "cameras": [cam]}))
    return path


def near(image, x, y, colour, r=3):
    """Whether a pixel of ``colour`` is within ``r`` pixels of the normalised point (x, y)."""
    h, w = image.shape[:2]
    px, py = int(x * (w - 1)), int(y * (h - 1))
    patch = image[max(py - r, 0) : py + r + 1, max(px - r, 0) : px + r + 1].astype(int)
    return bool((np.abs(patch - np.array(colour)).sum(axis=2) < 40).any())


def test_draw_the_current_frame_of_a_camera(tmp_path, capsys):
    out = tmp_path / "street.png"
    cfg = config(tmp_path, MEDIA / "ozlu_vehicle_survaillance.mp4")
    assert main(["draw", "--config", str(cfg), "--camera", "street", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    image = cv2.imread(str(out))
    h, w = image.shape[:2]
    assert (w, h) == (640, 352)
    # privacy mask: black inside, as the agent sees it
    inside = image[int(0.15 * h) : int(0.45 * h), int(0.8 * w) : int(0.97 * w)]
    assert inside.max() == 0
    # the lane zone's outline and the object mask's outline are drawn in their colours
    assert near(image, 0.9, 0.65, ZONE)  # on the lane's edge (0.55,0.3)-(1,0.75)
    assert near(image, 0.6, 0.45, OBJECT_MASK)  # bottom edge of the ignore mask
    assert not near(image, 0.2, 0.8, ZONE)  # far from every shape


def test_draw_on_a_given_image_and_errors(tmp_path, capsys):
    cfg = config(tmp_path, MEDIA / "ozlu_vehicle_survaillance.mp4")
    out = tmp_path / "bus.png"
    args = ["draw", "--config", str(cfg), "--camera", "street", "--out", str(out)]
    assert main([*args, "--image", str(MEDIA / "bus.jpg")]) == 0
    assert cv2.imread(str(out)).shape[:2] == cv2.imread(str(MEDIA / "bus.jpg")).shape[:2]
    capsys.readouterr()
    assert main(["draw", "--config", str(cfg), "--camera", "nope", "--out", str(out)]) == 2
    assert "--camera" in capsys.readouterr().err
    assert main([*args, "--image", str(tmp_path / "missing.jpg")]) == 2
    assert "--image" in capsys.readouterr().err
