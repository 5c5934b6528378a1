"""full.py presets: each loads into a valid FullConfig; long-diffusion is the default plus the generator recipe."""
from __future__ import annotations

import pytest

from components.config import to_dict
from components.errors import ConfigError
from pipelines.full import PRESETS, load


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "paper"])
def test_every_preset_loads(preset):
    assert load(preset, None, []).preset == preset


def test_paper_preset_asks_for_a_local_clip_checkpoint():
    with pytest.raises(ConfigError, match="clip_checkpoint"):
        load("paper", None, [])
    assert load("paper", None, ["diffaug.clip_checkpoint=/x/vit-l-14.pt"]).diffaug.diffusion.steps == 100000


def test_long_diffusion_is_the_default_with_the_generator_recipe():
    base, long = to_dict(load("default", None, [])), to_dict(load("long-diffusion", None, []))
    d = long["diffaug"]["diffusion"]
    assert (d["steps"], d["batch_size"], d["lr"], long["diffaug"]["cpus_per_actor"]) == (4000, 512, 1e-3, 1.0)
    for cfg in (base, long):
        for key in ("steps", "batch_size", "lr"):
            del cfg["diffaug"]["diffusion"][key]
        del cfg["preset"]
    assert long == base  # nothing else differs: results compare with the default's
