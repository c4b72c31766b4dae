"""dvc.yaml against the code: each stage's deps under src/ are exactly the package modules its
script imports (transitively), so a stale or missing dependency fails here, not in a rerun
that silently did not happen."""
import yaml

from depgraph import ROOT, stage_deps


def test_each_stage_depends_on_exactly_the_modules_its_script_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages
        script = stage["cmd"].split()[1]
        declared = sorted(d for d in stage["deps"] if isinstance(d, str) and d.startswith("src/"))
        expected = stage_deps(ROOT / script)
        missing, stale = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
        assert not missing and not stale, f"{name}: add {missing}, remove {stale}"
        assert script in stage["deps"], f"{name}: its script {script} is not a dep"
        checked += 1
    assert checked >= 8


def test_the_import_graph_sees_imports_inside_functions(tmp_path):
    from depgraph import imported_modules

    script = tmp_path / "s.py"
    script.write_text("def main():\n    from ferpipe.pipeline.finetune import finetune\n")
    assert "ferpipe.pipeline.finetune" in imported_modules(script)
