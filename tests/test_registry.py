import pytest

from diffrec import registry
from diffrec.errors import DiffrecError
from diffrec.registry import KINDS, Registry, UnknownPartError, list_parts, load_plugin

EXPECTED = {
    "schedule": {"linear", "cosine", "sqrt", "trunc_lin", "trunc_cos", "pw_lin"},
    "approximator": {"transformer", "gru", "mlp", "bsarec"},
    "loss": {"ce", "ce_fused", "mse", "bce", "bpr"},
    "rounding": {"inner_product", "l2", "cosine"},
    "timestep_sampler": {"uniform", "loss_aware"},
    "reverse_sampler": {"ddpm", "one_step"},
    "model": {"diffurec", "sasrec", "gru4rec", "bert4rec", "caser", "stosa"},
}


def test_builtin_parts_are_registered():
    parts = list_parts()
    assert list(parts) == list(KINDS)
    for kind, names in EXPECTED.items():
        assert names <= set(parts[kind]), kind


def test_unknown_name_lists_valid_choices():
    list_parts()
    with pytest.raises(UnknownPartError) as exc:
        registry("schedule").get("cosin")
    msg = str(exc.value)
    assert "unknown schedule 'cosin'" in msg
    for name in EXPECTED["schedule"]:
        assert name in msg
    assert isinstance(exc.value, DiffrecError)


def test_unknown_registry():
    with pytest.raises(UnknownPartError, match="valid choices: model"):
        registry("optimizer")


def test_register_build_by_name_or_object():
    reg: Registry = Registry("widget", base=dict)
    reg.register("box")(dict)
    assert reg.build("box", a=1) == {"a": 1}
    obj = {"b": 2}
    assert reg.build(obj) is obj
    with pytest.raises(DiffrecError, match="expected a widget name or a dict"):
        reg.build(3)
    assert "box" in reg and "BOX" in reg and "other" not in reg


def test_build_from_passes_only_accepted_arguments():
    reg: Registry = Registry("thing")

    @reg.register("pair")
    class Pair:
        def __init__(self, a, b=2):
            self.a, self.b = a, b

    built = reg.build_from("pair", a=1, unrelated=5)
    assert (built.a, built.b) == (1, 2)


def test_duplicate_registration_is_refused():
    reg: Registry = Registry("thing")
    reg.register("x")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(float)
    reg.register("x", overwrite=True)(float)
    assert reg.get("x") is float


def test_plugin_file_registers_parts(tmp_path):
    plugin = tmp_path / "my_parts.py"
    plugin.write_text(
        "from diffrec import register\n"
        "@register('schedule', 'plugin_const_test')\n"
        "class Const:\n"
        "    '''constant betas'''\n"
        "    def betas(self, n):\n"
        "        import numpy as np\n"
        "        return np.full(n, 0.1)\n"
    )
    load_plugin(str(plugin))
    assert "plugin_const_test" in registry("schedule")
    assert registry("schedule").describe("plugin_const_test") == "constant betas"


def test_plugin_errors_are_one_line(tmp_path):
    with pytest.raises(DiffrecError, match="plugin file not found"):
        load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(DiffrecError, match="cannot import plugin"):
        load_plugin("no_such_module_xyz")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(DiffrecError, match="RuntimeError: boom"):
        load_plugin(str(broken))


def test_library_imports_without_the_toml_writer():
    """GPU images lack tomli-w: importing the library and its kernels must not need it."""
    import subprocess
    import sys

    code = "import sys; sys.modules['tomli_w'] = None; import diffrec, diffrec.kernels, diffrec.trainer, diffrec.reproduce"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr



def test_a_new_module_in_a_builtin_package_registers_without_an_import(tmp_path, monkeypatch):
    """A new built-in part is one file: load_builtin_parts imports every module of its package."""
    import sys

    reg = sys.modules["diffrec.registry"]  # the module (the package re-exports its registry() function under the same name)

    package = tmp_path / "probe_parts"
    package.mkdir()
    (package / "__init__.py").write_text("")  # lists nothing
    (package / "probe.py").write_text(
        "from diffrec.approximators.base import Approximator\nfrom diffrec.registry import register\n\n"
        "@register('approximator', 'probe_only_in_its_file')\nclass Probe(Approximator):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reg, "_BUILTIN_MODULES", (*reg._BUILTIN_MODULES, "probe_parts"))
    monkeypatch.setattr(reg, "_walked", False)
    entries = registry("approximator")._entries
    monkeypatch.setattr(registry("approximator"), "_entries", dict(entries))  # the probe leaves with the test
    monkeypatch.setattr(registry("approximator"), "_docs", dict(registry("approximator")._docs))
    try:
        reg.load_builtin_parts()
        assert "probe_only_in_its_file" in registry("approximator").names()
    finally:
        sys.modules.pop("probe_parts.probe", None)
        sys.modules.pop("probe_parts", None)
    assert "probe_only_in_its_file" not in entries
