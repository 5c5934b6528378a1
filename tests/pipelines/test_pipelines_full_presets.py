"""full.py presets: each loads into a valid FullConfig; long-diffusion is the default plus the generator recipe."""
from __future__ import annotations

import pytest

from components.config import config_hash, to_dict
from components.errors import ConfigError
from pipelines.full import PRESETS, load, main, phase_key


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


def test_preset_given_as_override_or_yaml_is_applied(tmp_path):
    tiny_scale = PRESETS["tiny"]["sgg"]["scale"]
    by_override = load(None, None, ["preset=tiny"])
    assert (by_override.preset, by_override.sgg.scale) == ("tiny", tiny_scale)
    yaml = tmp_path / "c.yaml"
    yaml.write_text("preset: tiny\nhml:\n  lam: 0.25\n")
    by_yaml = load(None, str(yaml), [])
    assert (by_yaml.preset, by_yaml.sgg.scale, by_yaml.hml.lam) == ("tiny", tiny_scale, 0.25)
    assert load("tiny", str(yaml), ["preset=tiny"]).hml.steps_per_stage == PRESETS["tiny"]["hml"]["steps_per_stage"]
    by_both = load(None, str(yaml), ["preset=long-diffusion"])  # an override beats the YAML, as for any key
    assert (by_both.preset, by_both.sgg.scale, by_both.diffaug.diffusion.steps) == ("long-diffusion", 1.0, 4000)
    assert load(None, None, []).preset == "default"


def test_preset_conflicting_with_explicit_flag_is_one_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^preset: --preset default conflicts with preset=tiny"):
        load("default", None, ["preset=tiny"])
    yaml = tmp_path / "c.yaml"
    yaml.write_text("preset: tiny\n")
    assert main(["--preset", "paper", "--config", str(yaml), f"run_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [("error: preset: --preset paper conflicts with preset=tiny of the config or overrides "
                    "(expected one preset, or the same one in both places)")]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"^preset: value 'huge' is not allowed"):
        load(None, None, ["preset=huge"])


def test_hml_phase_key_leaves_out_predcls_so_an_upgrade_keeps_the_cache():
    """HMLConfig.mode arrived with SGCls: a PredCls phase keeps the key it had before (no `mode` in it), an
    SGCls phase gets its own."""
    predcls = phase_key(load("default", None, []).hml)
    sgcls = phase_key(load("default", None, ["hml.mode=sgcls"]).hml)
    assert "mode" not in predcls and sgcls["mode"] == "sgcls"
    assert {k: v for k, v in sgcls.items() if k != "mode"} == predcls
    assert config_hash(predcls) != config_hash(sgcls)


def test_diffaug_phase_key_leaves_out_the_shared_artifacts_dir():
    """Where DiffAugment's content-addressed artifacts live does not change its results: not in the phase key."""
    here = phase_key(load("default", None, []).diffaug)
    assert "artifacts_dir" not in here and phase_key(load("default", None, ["diffaug.artifacts_dir=/x"]).diffaug) == here


def test_hml_phase_key_leaves_out_how_many_methods_train_at_once():
    """concurrent_methods changes when stages run, not what they compute (test_pipelines_hml.py checks that
    the models are equal): not in the phase key."""
    here = phase_key(load("default", None, []).hml)
    assert "concurrent_methods" not in here
    assert phase_key(load("default", None, ["hml.concurrent_methods=1"]).hml) == here


def test_a_given_store_is_validated_not_cached(tmp_path, capsys):
    """A store given by path is checked on every run and reported as such (it is not a cached phase)."""
    from sgg_stores import write_tiny_store

    from components.stages import StageCache
    from pipelines.full import prepare_stage, timed
    store = write_tiny_store(tmp_path / "store", shard_size=24)
    timings = {}
    stage = timed(timings, prepare_stage(StageCache(tmp_path / "cache"), "sgg-planted", None, str(store)))
    assert not stage.cached and stage.result["store"] == str(store.resolve()) and timings["data-sgg"] > 0
    assert "[full] data-sgg: given store validated in" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="data-sgg / data-vrr"):
        load("default", None, ["phases=[data-sgg,hml]"])


def test_sgdet_prepares_sgg_planted_with_detections_in_its_own_cache_entry(tmp_path):
    """hml.mode=sgdet makes data-sgg write sgg-planted-det (the detector's config in its key): the same GT as
    sgg-planted's entry, plus detections; both entries live side by side."""
    from components.data.planted_detections import PlantedDetectionConfig
    from components.data.planted_sgg import PlantedSGGConfig
    from components.data.store import FeatureStore
    from components.stages import StageCache
    from pipelines.full import prepare_stage

    cache, sgg = StageCache(tmp_path / "cache"), PlantedSGGConfig(n_train=6, n_val=2, n_test=3, feature_dim=8)
    plain = prepare_stage(cache, "sgg-planted", sgg, None)
    det = prepare_stage(cache, "sgg-planted-det", sgg, None, PlantedDetectionConfig())
    assert plain.path != det.path
    a, b = FeatureStore(det.result["store"]), FeatureStore(plain.result["store"])
    assert a.manifest.detections and not b.manifest.detections
    assert a.read("test").drop_columns(["det_boxes", "det_features"]).equals(b.read("test"))
    assert prepare_stage(cache, "sgg-planted-det", sgg, None, PlantedDetectionConfig()).cached
    assert load("default", None, ["hml.mode=sgdet", "det.recall=0.5"]).det.recall == 0.5
