"""Fuzzing the config loader: any overrides or file give a valid Config or a ConfigError, nothing else."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptjax import config
from gptjax.config import Config, ConfigError

KEYS = sorted(config.all_keys())
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
VALUES = st.one_of(
    SCALARS.map(str),
    st.sampled_from(["", "null", "~", "nan", ".inf", "-.inf", "1e999", "0x10", "1_000", "[1, 2]", "{a: 1}", "[",
                     "'quoted'", "yes", "2024-01-01", "!!python/object:os.system ls", "&a 1", "*a", "auto"]),
    st.text(max_size=30),
)
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"), st.text(max_size=20),
                st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(config.SECTIONS), st.text(max_size=10)))
OVERRIDE = st.one_of(st.builds(lambda k, v: f"{k}={v}", KEY, VALUES), st.text(max_size=30))
TREE = st.recursive(SCALARS | st.lists(SCALARS, max_size=3),
                    lambda inner: st.dictionaries(st.sampled_from([*config.SECTIONS, *(k.split(".")[1] for k in KEYS),
                                                                   "bogus"]), inner, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    # pytest's own temporary folder, removed with its others: a module-level mkdtemp was never removed.
    return tmp_path_factory.mktemp("fuzz")


def loads_or_config_error(*args) -> None:
    try:
        cfg = config.load(*args)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, Config)
    assert config.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg  # what loads also saves and reloads


@settings(max_examples=300, deadline=None)
@given(st.lists(OVERRIDE, max_size=4))
def test_random_overrides(overrides):
    loads_or_config_error("tiny", overrides)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(TREE.map(lambda t: yaml.safe_dump(t, allow_unicode=True)), st.text(max_size=80)))
def test_random_config_files(scratch, text):
    path = scratch / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    loads_or_config_error(str(path))
