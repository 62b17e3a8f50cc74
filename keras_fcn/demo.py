"""The main job, end to end with nothing downloaded: synthetic shapes → train an FCN-8s → evaluate on
held-out images → overlay PNGs and training curves in an output folder → export a SavedModel, serve it with
the local TF-Serving-API server, query it over gRPC and check the answer against the in-process model.

No ImageNet weights are at hand offline, so the demo trains from scratch a narrow network of VGG16's
topology (same blocks, poolings, fc6/fc7 and skips; fewer channels) with Adam on the normalized loss.
`run_demo` keeps every size an argument: `keras-fcn demo` uses the defaults (about 2.5 minutes on 2 CPU
cores, held-out mean IU about 0.89; see the README), tests a tiny version.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import keras
import numpy as np

from keras_fcn.atomic import write_text
from keras_fcn.data import from_spec
from keras_fcn.evaluation import evaluate
from keras_fcn.metrics import format_scores
from keras_fcn.predict import predict_masks
from keras_fcn.training import TrainConfig, describe_backbone, train
from keras_fcn.visualize import overlay, plot_history, save_image


@dataclass
class DemoResult:
    """What `run_demo` returns; `images`/`masks` are the held-out set, for later steps (export, serving)."""

    model: keras.Model
    images: np.ndarray  # (N, H, W, 3) uint8, held out from training
    masks: np.ndarray  # (N, H, W) uint8 true class ids
    predictions: np.ndarray  # (N, H, W) uint8 predicted class ids
    scores: dict  # keras_fcn.metrics.scores of the held-out set (+ confusion matrix, class names)
    history: dict
    output_dir: str
    seconds: float
    class_names: tuple[str, ...] = ()
    serving: dict | None = None  # keras_fcn.serving.roundtrip_check's figures, when served


# The served answer must be the in-process one: probabilities equal up to float32 rounding, and class ids equal
# except where two classes tie within that rounding (a handful of pixels in a million at most).
SERVING_MAX_ABS_DIFFERENCE = 1e-5
SERVING_MIN_CLASS_AGREEMENT = 0.9999


def run_demo(
    output_dir: str = "demo_output",
    *,
    image_size: int = 128,
    train_examples: int = 2000,
    val_examples: int = 100,
    epochs: int = 12,
    steps_per_epoch: int = 150,
    batch_size: int = 8,
    crop_size: int = 96,
    backbone_filters: tuple[int, ...] = (8, 16, 32, 64, 64),
    fc_units: int = 128,
    learning_rate: float = 1e-3,
    num_classes: int = 5,
    overlays: int = 8,
    serve: bool = True,
    seed: int = 0,
    verbose: int | str = 2,
) -> DemoResult:
    """Trains an FCN-8s on synthetic shapes, evaluates it on held-out images and writes pictures.

    Args:
        output_dir: folder for the training run (`train/`), overlays (`overlays/*.png`), the training
            curves (`training_curves.png`) and the metrics (`metrics.txt`).
        image_size: side of the square synthetic images.
        train_examples, val_examples: sizes of the training and the held-out set (different seeds).
        epochs, steps_per_epoch, batch_size, crop_size: training length and batch shape.
        backbone_filters, fc_units: width of the VGG16-topology backbone.
        learning_rate: Adam's initial rate (polynomial decay to 0).
        num_classes: background + shapes.
        overlays: how many held-out overlays to write.
        serve: export the trained model (`serving/` in the output folder), serve it locally, query the
            overlay images over gRPC and check the answer equals the in-process prediction.
        seed: seed of data, initialisation and augmentation.
        verbose: Keras's progress output (2: one line per epoch).

    Returns:
        A `DemoResult`.

    Raises:
        RuntimeError: when the served answer differs from the in-process prediction.
    """
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    size = [image_size, image_size]
    config = TrainConfig(
        variant="fcn8s",
        num_classes=num_classes,
        backbone_filters=tuple(backbone_filters),
        fc_units=fc_units,
        dropout=0.0,  # a narrow net trained briefly does not overfit these endless shapes
        train_data=f"synthetic:{train_examples}",
        val_data=f"synthetic:{val_examples}",
        data_options={"image_size": size},
        batch_size=batch_size,
        crop_size=crop_size,
        scale_range=(0.75, 1.5),
        optimizer="adam",
        learning_rate=learning_rate,
        lr_schedule="poly",
        weight_decay=0.0,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        output_dir=os.path.join(output_dir, "train"),
        overwrite=True,  # a rerun of the demo redoes its whole folder, the training run included
        seed=seed,
        verbose=verbose,
    )
    print(f"keras_fcn demo: {describe_backbone(config)}.")
    print(
        "keras_fcn demo: no ImageNet weights are downloaded, so the backbone is a narrow network of VGG16's "
        "topology trained from scratch on synthetic shapes."
    )
    result = train(config)

    held_out = from_spec(config.val_data, "val", num_classes=num_classes, seed=seed, image_size=size)
    scores = evaluate(result.model, held_out)
    images, masks = (np.stack(arrays) for arrays in zip(*held_out, strict=True))
    predictions = np.stack(predict_masks(result.model, images))

    overlay_dir = os.path.join(output_dir, "overlays")
    os.makedirs(overlay_dir, exist_ok=True)
    for index in range(min(overlays, len(images))):
        # Drawn at twice the size (nearest neighbour) so that small shapes and the legend stay legible.
        image, truth_ids, predicted_ids = (np.kron(a, np.ones((2, 2) + (1,) * (a.ndim - 2), a.dtype))
                                           for a in (images[index], masks[index], predictions[index]))  # fmt: skip
        truth = overlay(image, truth_ids, held_out.class_names)
        predicted = overlay(image, predicted_ids, held_out.class_names)
        save_image(_side_by_side(truth, predicted), os.path.join(overlay_dir, f"heldout_{index:03d}.png"))
    plot_history(result.history, os.path.join(output_dir, "training_curves.png"))
    serving = None
    if serve:
        serving = _serve_and_query(result.model, images[: max(overlays, 1)], output_dir, held_out.class_names)
    seconds = time.time() - start
    report = format_scores(scores, held_out.class_names)
    header = f"{scores['num_images']} held-out images, {image_size}x{image_size}"
    write_text(os.path.join(output_dir, "metrics.txt"), f"{header}\n{report}\n")
    print(f"\nkeras_fcn demo: held-out set, {scores['num_images']} images at full resolution")
    print(report)
    print(f"\nkeras_fcn demo: finished in {seconds:.0f} s")
    print(f"keras_fcn demo: overlays (truth | prediction) in {overlay_dir}")
    print(f"keras_fcn demo: training curves in {os.path.join(output_dir, 'training_curves.png')}")
    return DemoResult(
        result.model, images, masks, predictions, scores, result.history, output_dir, seconds, held_out.class_names,
        serving,
    )


def _serve_and_query(model, images, output_dir, class_names) -> dict:
    from keras_fcn.serving import roundtrip_check  # gRPC and the TF Serving protos, only when serving

    figures = roundtrip_check(model, images, os.path.join(output_dir, "serving"), class_names=class_names)
    print(
        f"\nkeras_fcn demo: exported {figures['export_path']}, served it on the local TF-Serving-API server and "
        f"queried {len(images)} images over gRPC: class ids agree on {figures['class_agreement']:.4%} of pixels, "
        f"largest probability difference {figures['max_abs_difference']:.2g} (round trip "
        f"{figures['grpc_seconds'] * 1000:.0f} ms, in-process {figures['in_process_seconds'] * 1000:.0f} ms)"
    )
    agreement, difference = figures["class_agreement"], figures["max_abs_difference"]
    if agreement < SERVING_MIN_CLASS_AGREEMENT or difference > SERVING_MAX_ABS_DIFFERENCE:
        raise RuntimeError(
            "The served model's answer differs from the in-process prediction: "
            f"class agreement {agreement}, max |difference| {difference}"
        )
    return figures


def _side_by_side(left, right):
    from PIL import Image

    canvas = Image.new("RGB", (left.width + right.width + 4, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 4, 0))
    return canvas
