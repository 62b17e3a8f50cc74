"""The package's public surface: names that are what they say, a light import (tests/test_as_users_run_it.py
loads a saved model in every import order)."""

import importlib
import pkgutil
import subprocess
import sys

import keras_fcn


def test_public_names_are_their_objects_whatever_was_imported_before():
    # Importing a submodule sets an attribute of the package: a module named like a public function would
    # replace the function (keras_fcn.train was once both). Import every module, then check each name.
    for info in pkgutil.walk_packages(keras_fcn.__path__, "keras_fcn."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name, module in keras_fcn._EXPORTS.items():
        assert getattr(keras_fcn, name) is getattr(importlib.import_module(module), name), name
    assert sorted(keras_fcn.__all__) == sorted([*keras_fcn._EXPORTS, *keras_fcn._SUBMODULES, "register_keras_objects"])


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_import_and_the_command_line_parser_load_no_tensorflow():
    code = (
        "import sys, keras_fcn, keras_fcn.config, keras_fcn.recipes, keras_fcn.cli\n"
        "for verb in ('train', 'batch-predict'):\n"
        "    try:\n        keras_fcn.cli.main([verb, '--help'])\n    except SystemExit:\n        pass\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'apache_beam' in sys.modules)"
    )
    assert _run(code).splitlines()[-1] == "False False False"
