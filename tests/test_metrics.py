"""Metrics and loss against a plain numpy implementation of the reference formulas (`score.py`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fcn import metrics


def reference_scores(labels, predictions, n):
    """score.py, written out with loops: fast_hist, then the four metrics with NaN classes left out."""
    hist = np.zeros((n, n), dtype=np.int64)
    for label, prediction in zip(labels.ravel(), predictions.ravel(), strict=True):
        if 0 <= label < n:
            hist[label, prediction] += 1
    acc = np.diag(hist).sum() / hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = np.diag(hist) / hist.sum(1)
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    freq = hist.sum(1) / hist.sum()
    return hist, {
        "pixel_accuracy": acc,
        "mean_accuracy": np.nanmean(class_acc),
        "mean_iu": np.nanmean(iu),
        "fw_iu": (freq[freq > 0] * iu[freq > 0]).sum(),
        "per_class_iu": iu,
    }


def random_case(seed, n=6, shape=(3, 9, 11)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n, size=shape)
    labels[labels == 2] = 1  # class 2 never in the truth ...
    labels[rng.random(shape) < 0.15] = 255  # ... some pixels ignored
    logits = rng.normal(size=shape + (n,)).astype("float32")
    logits[..., 4] -= 100.0  # ... class 4 never predicted
    labels[labels == 4] = 3  # ... and never true: absent from both, left out of the means
    logits[..., 5] -= 100.0  # class 5 true but never predicted: IU 0, counted
    return labels, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_scores_match_reference(seed):
    labels, logits = random_case(seed)
    hist, expected = reference_scores(labels, logits.argmax(-1), 6)
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, logits.argmax(-1), 6), hist)
    result = metrics.scores(hist)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-12)
    np.testing.assert_allclose(result["per_class_iu"], expected["per_class_iu"], rtol=1e-12)
    assert np.isnan(result["per_class_iu"][4]) and result["per_class_iu"][5] == 0.0


SINGLE_METRICS = (metrics.PixelAccuracy, metrics.MeanAccuracy, metrics.MeanIU, metrics.FrequencyWeightedIU)


@pytest.mark.parametrize("seed", [3, 4])
def test_keras_metrics_stream_and_match_reference(seed):
    labels, logits = random_case(seed)
    _, expected = reference_scores(labels, logits.argmax(-1), 6)
    for metric in [cls(6) for cls in SINGLE_METRICS]:
        for i in range(labels.shape[0]):  # streamed one image at a time, masks with a channel axis
            metric.update_state(labels[i : i + 1, ..., None], logits[i : i + 1])
        np.testing.assert_allclose(float(metric.result()), expected[metric.name], rtol=1e-6)
        metric.reset_state()
        assert float(metric.result()) == 0.0


@pytest.mark.parametrize("seed", [3, 4])
def test_segmentation_scores_stream_all_four_from_one_matrix(seed):
    labels, logits = random_case(seed)
    hist, expected = reference_scores(labels, logits.argmax(-1), 6)
    (metric,) = metrics.segmentation_metrics(6)
    assert len(metric.variables) == 1  # one confusion matrix for the four metrics
    for i in range(labels.shape[0]):
        metric.update_state(labels[i : i + 1], logits[i : i + 1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(metric.variables[0]), hist)
    result = metric.result()
    assert sorted(result) == sorted(("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"))
    for key, value in result.items():
        np.testing.assert_allclose(float(value), expected[key], rtol=1e-6)
    metric.reset_state()
    assert all(float(value) == 0.0 for value in metric.result().values())


def test_metrics_in_compile_and_evaluate():
    labels, logits = random_case(5, shape=(4, 8, 8))
    _, expected = reference_scores(labels, logits.argmax(-1), 6)
    inputs = keras.Input((8, 8, 6))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=metrics.SegmentationLoss(), metrics=metrics.segmentation_metrics(6))
    result = model.evaluate(logits, labels, batch_size=2, verbose=0, return_dict=True)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-6)


def test_metric_config_round_trip():
    metric = metrics.MeanIU(num_classes=7)
    clone = metrics.MeanIU.from_config(metric.get_config())
    assert clone.num_classes == 7 and clone.name == "mean_iu"
    with pytest.raises(ValueError, match="Received: num_classes=0"):
        metrics.MeanIU(num_classes=0)
    scores = metrics.SegmentationScores.from_config(metrics.SegmentationScores(num_classes=5).get_config())
    assert scores.num_classes == 5 and scores.name == "segmentation_scores"


def numpy_loss(labels, logits, weights=None):
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    valid = labels != 255
    pixel = -np.take_along_axis(log_softmax, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    w = valid.astype(np.float64)
    if weights is not None:
        w = w * np.asarray(weights)[np.where(valid, labels, 0)]
    return (pixel * w).sum() / w.sum(), (pixel * w).sum() / labels.shape[0]


def test_loss_matches_numpy_with_ignore_and_class_weights():
    labels, logits = random_case(6)
    labels[labels == 5] = 0
    weights = [1.0, 2.0, 0.5, 3.0, 1.0, 1.0]
    normalized, summed = numpy_loss(labels, logits.astype(np.float64), weights)
    np.testing.assert_allclose(float(metrics.SegmentationLoss(weights)(labels, logits)), normalized, rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics.SegmentationLoss(weights, normalize=False)(labels, logits)), summed, rtol=1e-5
    )
    unweighted, _ = numpy_loss(labels, logits.astype(np.float64))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    np.testing.assert_allclose(float(metrics.SegmentationLoss()(labels, logits)), unweighted, rtol=1e-5)
    np.testing.assert_allclose(float(keras_loss(labels, logits)), unweighted, rtol=1e-5)


def test_loss_gives_zero_gradient_at_ignored_pixels():
    labels, logits = random_case(7)
    logits[labels == 255] = 1e4 * np.sign(logits[labels == 255])  # extreme logits: still no leak
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = metrics.SegmentationLoss(class_weights=[1, 2, 1, 1, 1, 1])(labels, x)
    grad = tape.gradient(loss, x).numpy()
    assert np.isfinite(grad).all()
    assert np.all(grad[labels == 255] == 0.0)
    assert np.all(np.abs(grad[labels != 255]).sum(-1) > 0)


def test_loss_rejects_bad_class_weights():
    with pytest.raises(ValueError, match="Received: class_weights"):
        metrics.SegmentationLoss(class_weights=[1.0, -1.0])


def test_predictions_outside_the_classes_are_refused():
    labels = np.array([[0, 1], [2, 255]])
    with pytest.raises(ValueError, match=r"Received: predictions with values \[-1, 3\]"):
        metrics.confusion_matrix(labels, np.array([[0, 3], [-1, 3]]), 3)
    metric = metrics.MeanIU(num_classes=3)
    with pytest.raises(ValueError, match=r"Received: y_pred.shape=\(1, 2, 2, 4\)"):
        metric.update_state(labels[None], np.zeros((1, 2, 2, 4), "float32"))
    np.testing.assert_array_equal(metric.hist.numpy(), np.zeros((3, 3)))  # nothing counted


def test_evaluate_refuses_a_model_with_another_class_count():
    from keras_fcn.data import synthetic
    from keras_fcn.evaluation import evaluate

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))  # 4 outputs, 3 classes in the data
    with pytest.raises(ValueError, match="The model scores 4 classes.*Received: num_classes=3"):
        evaluate(model, synthetic(num_examples=2, image_size=(16, 16), num_classes=3))


@pytest.mark.parametrize("weights", [(1.0, 2.0), (1.0, 2.0, 3.0, 4.0)])
def test_loss_refuses_class_weights_of_another_length(weights):
    loss = metrics.SegmentationLoss(class_weights=weights)
    y_true = np.zeros((1, 2, 2), "int32")
    with pytest.raises(ValueError, match=r"one weight per class \(3\).*Received: class_weights="):
        loss(y_true, np.zeros((1, 2, 2, 3), "float32"))
