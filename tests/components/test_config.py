"""Typed config: YAML + overrides, unknown keys with suggestions, wrong types, ranges."""
import math
from dataclasses import dataclass, field, replace

import pytest

from components.config import apply_overrides, config_hash, flatten, from_dict, load_config, to_dict
from components.errors import ConfigError


@dataclass
class Inner:
    lam: float = field(default=0.5, metadata={"range": (0.0, 10.0)})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})


@dataclass
class Root:
    name: str = "x"
    steps: int = 10
    ks: tuple[int, ...] = (20, 50)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 20\ninner:\n  lam: 0.25\n")
    cfg = load_config(Root, p, ["inner.mode=b", "ks=[20,50,100]", "path=/tmp/x"])
    assert cfg.steps == 20 and cfg.inner.lam == 0.25 and cfg.inner.mode == "b"
    assert cfg.ks == (20, 50, 100) and cfg.path == "/tmp/x"


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"inner\.lamb.*did you mean 'lam'"):
        from_dict(Root, {"inner": {"lamb": 1.0}})


def test_wrong_type_and_range_and_choice():
    with pytest.raises(ConfigError, match="steps.*an integer"):
        from_dict(Root, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"inner\.lam.*out of range.*\[0.0, 10.0\]"):
        from_dict(Root, {"inner": {"lam": -1}})
    with pytest.raises(ConfigError, match="inner.mode.*one of"):
        from_dict(Root, {"inner": {"mode": "c"}})


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(Root, bad)


def test_flatten_and_hash_are_stable():
    a, b = Root(), Root(inner=Inner(lam=0.7))
    flat = flatten(to_dict(a))
    assert flat["inner.lam"] == 0.5 and flat["ks"] == [20, 50]
    assert config_hash(a) == config_hash(Root()) != config_hash(b)


@dataclass
class Floats:
    lr: float = field(default=0.1, metadata={"range": (0.0, 1.0)})
    weight: float = field(default=1.0, metadata={"range": (0.0, None)})  # open above
    free: float = 0.0
    scales: tuple[float, ...] = (1.0,)
    share: float | None = None


def test_malformed_list_override_names_the_key():
    with pytest.raises(ConfigError, match=r"^ks: cannot parse '\[20,50' as a list \(expected a list such as \[a, b\]\)$"):
        load_config(Root, None, ["ks=[20,50"])


def test_non_string_keys_are_unknown_config_keys(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("1: x\n")
    with pytest.raises(ConfigError, match=r"^1: unknown config key"):
        load_config(Root, top)
    nested = tmp_path / "nested.yaml"
    nested.write_text("inner: {2: y}\n")
    with pytest.raises(ConfigError, match=r"^inner\.2: unknown config key"):
        load_config(Root, nested)
    with pytest.raises(ConfigError, match=r"^None: unknown config key"):
        from_dict(Root, {None: 1})


@pytest.mark.parametrize("key", ["lr", "weight", "free", "scales", "share"])
@pytest.mark.parametrize("raw", [".nan", "nan", ".inf", "-.inf", "inf", "-inf", "1e999"])
def test_non_finite_floats_are_refused(key, raw):
    value = f"[1.0, {raw}]" if key == "scales" else raw
    with pytest.raises(ConfigError, match=rf"^{key}(\[1\])?: got .* \(expected a finite number\)$"):
        load_config(Floats, None, [f"{key}={value}"])
    finite = load_config(Floats, None, [f"{key}={'[0.5]' if key == 'scales' else '0.5'}"])
    assert getattr(finite, key) == ((0.5,) if key == "scales" else 0.5)
    assert replace(finite, **{key: getattr(Floats(), key)}) == Floats()  # the other fields: defaults


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_python_floats_are_refused(number):
    with pytest.raises(ConfigError, match=r"^weight: got .* \(expected a finite number\)$"):
        from_dict(Floats, {"weight": number})
    with pytest.raises(ConfigError, match=r"^scales\[0\]: got .* \(expected a finite number\)$"):
        from_dict(Floats, {"scales": [number]})
