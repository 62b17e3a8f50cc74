"""keras_fcn: Fully Convolutional Networks for semantic segmentation on TensorFlow 2 + Keras 3."""

from setuptools import find_packages, setup

# TensorFlow, its serving API and Keras move together: tensorflow-serving-api's minor version follows
# tensorflow's, so both are pinned to the same minor release.
TF_MINOR = "2.21"

setup(
    name="keras_fcn",
    version="0.1.0",
    description="Fully Convolutional Networks (FCN-32s/16s/8s) for semantic segmentation in Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # serving/ stays a top-level folder (deployment files beside the code) yet imports as keras_fcn.serving.
    packages=find_packages(include=["keras_fcn", "keras_fcn.*"])
    + ["keras_fcn.serving"]
    + [f"keras_fcn.serving.{folder}" for folder in find_packages("serving")],
    package_dir={"keras_fcn.serving": "serving"},
    # The TF Serving deployment files travel with the serving package.
    package_data={
        "keras_fcn.serving": ["models.config", "batching_parameters.txt", "docker-compose.yml"]
        # the page `keras-fcn serve` shows at / of its REST port: plain files, no build step
        + ["web/index.html", "web/app.js", "web/style.css"],
        # the reference's seg11valid split list (PASCAL VOC image ids)
        "keras_fcn.data": ["seg11valid.txt"],
    },
    install_requires=[
        f"tensorflow=={TF_MINOR}.*",
        f"tensorflow-serving-api=={TF_MINOR}.*",
        "grpcio>=1.60",
        # the local server's REST port: an event loop reads requests, slow clients hold no worker
        "tornado>=6.4",
        # keras_fcn.keras_internals is checked against these releases only.
        "keras>=3.15,<3.16",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "h5py>=3.10",
        "protobuf>=4.21",  # the .caffemodel schema (message_factory.GetMessageClass)
        "pillow>=10",
        # training: TensorBoard logs, SBD's .mat masks, training-curve plots
        "tensorboard>=2.16",
        "scipy>=1.10",
        "matplotlib>=3.7",
    ],
    extras_require={
        # keras-fcn export --format onnx / litert: the file's library or converter, and the runtime that checks it
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        "litert": ["ai-edge-litert>=1.2"],
        # keras-hub presets and classes (keras_fcn.hub, keras_fcn.presets, --preset-dir): optional, as keras-hub
        # brings tensorflow-text, tokenizers, kagglehub and huggingface_hub, which nothing else here needs.
        "hub": ["keras-hub>=0.32", "huggingface_hub>=0.20"],  # hf:// handles need huggingface_hub
        # keras-fcn batch-predict / keras_fcn.beam: RunInference over the SavedModel (tested with 2.70 and 2.78;
        # Beam caps protobuf below 7, which TensorFlow 2.21 accepts). Dataflow also needs Beam's [gcp] extra.
        "beam": ["apache-beam>=2.70"],
        "dev": [
            # both export formats are tested
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "ai-edge-litert>=1.2",
            # the presets are tested
            "keras-hub>=0.32",
            "huggingface_hub>=0.20",
            # batch-predict is tested with Beam's DirectRunner
            "apache-beam>=2.70",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pyyaml>=6",
            "ruff>=0.6",
            # serving robustness: a generated corpus of hostile requests; server RSS under load
            "hypothesis>=6.100",
            "psutil>=5.9",
            # the quickstart notebook is executed by a test
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6.25",
            # serving tests: throwaway TLS certificates, and Prometheus's own parser of the metrics page
            "cryptography>=42",
            "prometheus-client>=0.20",
            # the served page is tested in Debian's headless chromium (chromium, chromium-driver)
            "selenium>=4.20",
            # an independent Caffe implementation for the .caffemodel importer's tests (5.x has no Caffe reader)
            "opencv-python-headless>=4.5,<5",
        ],
    },
    entry_points={"console_scripts": ["keras-fcn=keras_fcn.cli:main"]},
    # SPDX expression and the file shipped in the wheel (.dist-info/licenses/LICENSE)
    license_expression="Apache-2.0",
    license_files=["LICENSE"],
)
