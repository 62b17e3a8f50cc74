"""The tiny SavedModels of TF Serving's own tests, built at test time by our own code.

    python tests/serving/upstream_models.py OUT_DIR

writes them under OUT_DIR with a `models.config` naming each as the upstream-case tests expect,
so a real server can answer the same tests:

    tensorflow_model_server --port=8500 --rest_api_port=8501 \
        --model_config_file=OUT_DIR/models.config
    KERAS_FCN_UPSTREAM_GRPC=localhost:8500 KERAS_FCN_UPSTREAM_REST=http://localhost:8501 \
    KERAS_FCN_UPSTREAM_BASE_PATH=OUT_DIR pytest tests/serving/test_upstream_cases.py

The models follow the facts of tensorflow/serving's `testdata` (what each computes, its
signature names, keys, shapes and method names); the code that writes them is ours:

- half_plus_two, TF1 style (graph, `parse_example`, `SavedModelBuilder`): variables a = 0.5,
  b = 2, c = 3 (and a2 = 0.5, c2 = 3 for the x2 path); y = a*x + b, y2 = a*x + c, y3 = a2*x2 + c2;
  `x` and `x2` are read from serialized tf.Examples (`x2` defaults to 0). Signatures:
  `serving_default` (predict, x -> y), `classify_x_to_y` (classify, serialized -> scores = y),
  `regress_x_to_y`, `regress_x_to_y2` (regress, serialized -> outputs), `regress_x2_to_y3`
  (regress, x2 -> y3) and, as in TensorFlow's own copy of the model, `classify_x2_to_y3`.
  An asset `foo.txt` is written and assigned to a string variable by the main op.
- half_plus_two, TF2 style (`tf.Module` + `tf.saved_model.save`): the same signatures, all with
  TF2's predict method name, `serving_default` on x of shape [1].
- half_plus_three: the TF1 model with b = 3.
- a bad model: a version folder holding a TF1 `Saver` export (`export.meta` and a checkpoint),
  no SavedModel, as TF Serving's `bad_half_plus_two`.
- a counter: TF1 `get_counter`, `incr_counter`, `incr_counter_by` (input `delta`) and
  `reset_counter` predict signatures over one variable.

`ref_variables=True` builds the TF1 models with reference variables (`VariableV2` ops, what TF1
itself wrote), which only a TF1 session loads.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import tensorflow as tf

VERSION = 123  # TF Serving's test models live in version folder 00000123
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def version_dir(base_path: str, version: int = VERSION) -> str:
    """The zero-padded version folder TF Serving's testdata uses (`00000123`)."""
    return os.path.join(base_path, f"{version:08d}")


def _signature(inputs: dict, outputs: dict, method: str):
    v1 = tf.compat.v1
    return v1.saved_model.signature_def_utils.build_signature_def(
        inputs={k: v1.saved_model.utils.build_tensor_info(t) for k, t in inputs.items()},
        outputs={k: v1.saved_model.utils.build_tensor_info(t) for k, t in outputs.items()},
        method_name=method,
    )


def _variable(value, name: str, ref_variables: bool, **kwargs):
    return tf.compat.v1.Variable(value, name=name, use_resource=not ref_variables, **kwargs)


def half_plus_n_tf1(
    export_dir: str,
    *,
    b: float = 2.0,
    c: float = 3.0,
    classify_x2_to_y3: bool = True,
    ref_variables: bool = False,
) -> str:
    """Writes the TF1-style half_plus_two (b = 2) or half_plus_three (b = 3) to `export_dir`."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        a = _variable(0.5, "a", ref_variables)
        b_var = _variable(b, "b", ref_variables)
        c_var = _variable(c, "c", ref_variables)
        # Unknown rank, as the SignatureDefs of TF Serving's testdata say (its script now writes [None]).
        serialized = v1.placeholder(tf.string, shape=None, name="tf_example")
        features = v1.io.parse_example(
            tf.reshape(serialized, [-1]),  # (N,): gives the features their static shape (N, 1)
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(features["x"], name="x")  # (N, 1)
        y = tf.identity(a * x + b_var, name="y")
        y2 = tf.identity(a * x + c_var, name="y2")
        x2 = tf.identity(features["x2"], name="x2")
        # Separate variables for the x2 path, as upstream keeps the two paths apart.
        a2 = _variable(0.5, "a2", ref_variables)
        c2 = _variable(c, "c2", ref_variables)
        y3 = tf.identity(a2 * x2 + c2, name="y3")

        # An asset whose file name a string variable receives from the main op.
        assets = tempfile.mkdtemp()
        asset_path = os.path.join(assets, "foo.txt")
        with open(asset_path, "w", encoding="utf-8") as f:
            f.write("asset-file-contents")
        asset = tf.constant(asset_path)
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
        filename = _variable("foo.txt", "filename_tensor", ref_variables, trainable=False, collections=[])
        main_op = tf.group(filename.assign("foo.txt"))

        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
        }
        if classify_x2_to_y3:
            signatures["classify_x2_to_y3"] = _signature({"inputs": x2}, {"scores": y3}, CLASSIFY)
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            session,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map=signatures,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=main_op,
        )
        builder.save()
    os.remove(asset_path)
    os.rmdir(assets)
    return export_dir


class _HalfPlusTwo(tf.Module):
    """y = 0.5 x + 2 (y2 = 0.5 x + 3, y3 = 0.5 x2 + 3) with TF2 signatures over tf.Examples."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = tf.Variable(0.5), tf.Variable(2.0), tf.Variable(3.0)

    def _parse(self, serialized):
        features = tf.io.parse_example(
            serialized,
            {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        return features["x"], features["x2"]  # (N, 1) each

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress_x_to_y(self, inputs):
        x, _ = self._parse(inputs)
        return {"outputs": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def regress_x_to_y2(self, inputs):
        x, _ = self._parse(inputs)
        return {"outputs": self.a * x + self.c}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def classify_x_to_y(self, inputs):
        x, _ = self._parse(inputs)
        return {"scores": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def regress_x2_to_y3(self, inputs):
        return {"outputs": self.a * inputs + self.c}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def classify_x2_to_y3(self, inputs):
        return {"scores": self.a * inputs + self.c}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def serve(self, x):
        return {"y": self.a * x + self.b}


def half_plus_two_tf2(export_dir: str) -> str:
    """Writes the TF2-style half_plus_two (`tf.Module`, `tf.saved_model.save`) to `export_dir`."""
    module = _HalfPlusTwo()
    names = ("regress_x_to_y", "regress_x_to_y2", "classify_x_to_y", "regress_x2_to_y3", "classify_x2_to_y3")
    signatures = {name: getattr(module, name) for name in names}
    signatures["serving_default"] = module.serve
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


def bad_model(export_dir: str) -> str:
    """A version folder with a TF1 `Saver` export and no SavedModel (TF Serving's bad_half_plus_two)."""
    v1 = tf.compat.v1
    os.makedirs(export_dir, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        a, b = v1.Variable(0.5), v1.Variable(2.0)
        x = v1.placeholder(tf.float32)
        tf.add(tf.multiply(a, x), b)
        session.run(v1.global_variables_initializer())
        saver = v1.train.Saver()
        saver.export_meta_graph(filename=os.path.join(export_dir, "export.meta"))
        saver.save(session, os.path.join(export_dir, "export"), write_meta_graph=False)
    return export_dir


def counter_tf1(export_dir: str, *, ref_variables: bool = False) -> str:
    """Writes TF Serving's counter model: stateful predict signatures over one float variable."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        counter = _variable(0.0, "counter", ref_variables)
        delta = v1.placeholder(tf.float32, name="delta")
        outputs = {
            "get_counter": counter.read_value() if not ref_variables else tf.identity(counter),
            "incr_counter": counter.assign_add(1.0),
            "reset_counter": counter.assign(0.0),
        }
        incr_by = counter.assign_add(delta)
        session.run(v1.global_variables_initializer())
        signatures = {name: _signature({}, {"output": tensor}, PREDICT) for name, tensor in outputs.items()}
        signatures["incr_counter_by"] = _signature({"delta": delta}, {"output": incr_by}, PREDICT)
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            session, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures
        )
        builder.save()
    return export_dir


def tf_saved_model_save(export_dir: str) -> str:
    """A `tf.train.Checkpoint` root saved with one signature on x of unknown shape: y = 3 * 2 * x."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, export_dir, root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    return export_dir


def tf_saved_model_save_multiple_signatures(export_dir: str) -> str:
    """Two signatures answering constants: `serving_default` y = 1, `custom_signature_key` y = 2."""
    root = tf.train.Checkpoint()
    spec = [tf.TensorSpec(None, tf.float32)]
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=spec)
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=spec)
    tf.saved_model.save(root, export_dir, signatures={"serving_default": root.f, "custom_signature_key": root.g})
    return export_dir


TWO_VERSIONS = "saved_model_half_plus_two_2_versions"
# name -> (folder, builder, versions, the ModelConfig text beyond name and base path)
MODELS = {
    "default": ("half_plus_two", lambda d: half_plus_n_tf1(d, classify_x2_to_y3=False), (123,), ""),
    "half_plus_two_ref": ("half_plus_two_ref", lambda d: half_plus_n_tf1(d, ref_variables=True), (123,), ""),
    "half_plus_two_tf2": ("half_plus_two_tf2", half_plus_two_tf2, (123,), ""),
    "half_plus_three": ("half_plus_three", lambda d: half_plus_n_tf1(d, b=3.0, c=4.0), (123,), ""),
    # As TF Serving's REST handler test serves it: version 123 only, labelled.
    TWO_VERSIONS: (
        TWO_VERSIONS,
        half_plus_n_tf1,
        (123, 124),
        'model_version_policy { specific { versions: 123 } }\n    version_labels { key: "Version_Label" value: 123 }',
    ),
    # As its GetModelStatus test serves it: both versions.
    "two_versions_both": (TWO_VERSIONS, half_plus_n_tf1, (123, 124), "model_version_policy { all {} }"),
    "counter": ("counter", lambda d: counter_tf1(d, ref_variables=True), (123,), ""),
    "tf_saved_model_save": ("tf_saved_model_save", tf_saved_model_save, (123,), ""),
    "tf_saved_model_save_multiple_signatures": (
        "tf_saved_model_save_multiple_signatures",
        tf_saved_model_save_multiple_signatures,
        (123,),
        "",
    ),
}


def write_all(out_dir: str, names=None) -> str:
    """Builds the models of `MODELS` (all, or `names`) under `out_dir` and writes `out_dir/models.config`.

    Returns:
        The path of the config file (a `ModelServerConfig` listing those models).
    """
    entries = []
    for name in names or MODELS:
        folder, build, versions, extra = MODELS[name]
        base = os.path.abspath(os.path.join(out_dir, folder))
        for version in versions:
            if not os.path.exists(version_dir(base, version)):
                build(version_dir(base, version))
        entries.append(
            f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n    model_platform: "tensorflow"\n'
            + (f"    {extra}\n" if extra else "")
            + "  }\n"
        )
    path = os.path.join(out_dir, "models.config")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("model_config_list {\n" + "".join(entries) + "}\n")
    os.replace(path + ".tmp", path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the models and models.config into")
    args = parser.parse_args(argv)
    print(write_all(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
