"""CaffeSGD against a numpy transcription of Caffe's SGDSolver; Keras's decoupled decay left as it was."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import TINY

from keras_fcn.config import TrainConfig
from keras_fcn.metrics import SegmentationLoss
from keras_fcn.optimizers import CaffeSGD
from keras_fcn.training import build_model, make_optimizer

LR, MOMENTUM, DECAY = 0.05, 0.99, 5e-4


def caffe_sgd(weights, grads_per_step, lr, momentum, weight_decay, lr_mult, decay_mult):
    """Caffe's SGDSolver on one blob: Regularize, ComputeUpdateValue, Net::Update, step after step."""
    w = np.asarray(weights, np.float64).copy()
    history = np.zeros_like(w)
    for grad in grads_per_step:
        diff = grad + weight_decay * decay_mult * w  # caffe_axpy(local_decay, data, diff)
        history = lr * lr_mult * diff + momentum * history  # caffe_cpu_axpby(local_rate, diff, momentum, history)
        w = w - history  # Update: data -= diff, diff holding the history
    return w


def decoupled_sgd(weights, grads_per_step, lr, momentum, weight_decay):
    """Keras's SGD with decoupled decay: shrink by lr * wd first, then the momentum step."""
    w = np.asarray(weights, np.float64).copy()
    velocity = np.zeros_like(w)
    for grad in grads_per_step:
        w = w - w * weight_decay * lr
        velocity = momentum * velocity - lr * grad
        w = w + velocity
    return w


def run_steps(optimizer, variables, grads_per_step):
    for grads in grads_per_step:
        optimizer.apply([keras.ops.convert_to_tensor(g, "float32") for g in grads], variables)
    return [v.numpy() for v in variables]


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(0, 1, (3, 3, 2, 4)).astype("float32")
    bias0 = rng.normal(0, 1, (4,)).astype("float32")
    grads = [(rng.normal(0, 1, kernel0.shape), rng.normal(0, 1, bias0.shape)) for _ in range(6)]
    return kernel0, bias0, grads


def test_caffe_sgd_equals_caffes_solver_for_kernels_and_biases(blobs):
    kernel0, bias0, grads = blobs
    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    got_kernel, got_bias = run_steps(CaffeSGD(LR, momentum=MOMENTUM, l2_weight_decay=DECAY), [kernel, bias], grads)
    want_kernel = caffe_sgd(kernel0, [g for g, _ in grads], LR, MOMENTUM, DECAY, lr_mult=1, decay_mult=1)
    want_bias = caffe_sgd(bias0, [g for _, g in grads], LR, MOMENTUM, DECAY, lr_mult=2, decay_mult=0)
    np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_bias, want_bias, rtol=1e-5, atol=1e-5)
    # The decay is really in there: without it the kernel ends elsewhere.
    no_decay = caffe_sgd(kernel0, [g for g, _ in grads], LR, MOMENTUM, 0.0, 1, 1)
    assert np.max(np.abs(no_decay - want_kernel)) > 1e-3


def test_caffe_decay_is_about_a_hundred_times_the_decoupled_one_at_momentum_099():
    # Zero gradients: only the decay moves the weights. After many steps the coupled form has shrunk them
    # ~1/(1 - momentum) = 100 times more per step than the decoupled form with the same number.
    w0, lr, wd, steps = np.ones(3), 1e-3, 5e-4, 3000
    zeros = [np.zeros(3)] * steps
    caffe_shrink = -np.log(caffe_sgd(w0, zeros, lr, MOMENTUM, wd, 1, 1)[0])
    decoupled_shrink = -np.log(decoupled_sgd(w0, zeros, lr, MOMENTUM, wd)[0])
    assert 80 < caffe_shrink / decoupled_shrink < 101


def test_decoupled_mode_is_keras_sgd_with_decoupled_decay_and_no_bias_decay(blobs):
    kernel0, bias0, grads = blobs
    optimizer = make_optimizer(TrainConfig(learning_rate=LR, weight_decay=DECAY), steps_per_epoch=1)
    assert type(optimizer) is keras.optimizers.SGD and optimizer.weight_decay == DECAY
    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    got_kernel, got_bias = run_steps(optimizer, [kernel, bias], grads)
    want_kernel = decoupled_sgd(kernel0, [g for g, _ in grads], LR, MOMENTUM, DECAY)
    want_bias = decoupled_sgd(bias0, [g for _, g in grads], LR, MOMENTUM, 0.0)
    np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_bias, want_bias, rtol=1e-5, atol=1e-5)


def test_caffe_mode_optimizer_from_config():
    optimizer = make_optimizer(
        TrainConfig(weight_decay_mode="caffe", learning_rate=1e-10, weight_decay=5e-4), steps_per_epoch=1
    )
    assert isinstance(optimizer, CaffeSGD) and optimizer.weight_decay is None
    assert (optimizer.momentum, optimizer.l2_weight_decay, optimizer.bias_lr_mult, optimizer.bias_decay_mult) == (
        0.99, 5e-4, 2.0, 0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs optimizer='sgd'. Received: optimizer='adam'"):
        TrainConfig(weight_decay_mode="caffe", optimizer="adam")
    with pytest.raises(ValueError, match="Received: weight_decay_mode='l2'"):
        TrainConfig(weight_decay_mode="l2")
    with pytest.raises(ValueError, match="Received: weight_decay=0.1"):
        CaffeSGD(weight_decay=0.1)
    with pytest.raises(ValueError, match="Received: fixed_upsampling=True, learn_final_upsampling=True"):
        TrainConfig(fixed_upsampling=True, learn_final_upsampling=True)


def test_fit_step_in_a_model_follows_caffe_and_leaves_fixed_upsampling_alone():
    config = TrainConfig(variant="fcn16s", geometry="caffe", dropout=0.0, fixed_upsampling=True, **TINY)
    model = build_model(config, num_classes=3)
    for layer in model.layers:  # non-zero scores so that every layer gets a gradient
        if layer.name.startswith("score_"):
            layer.set_weights([np.full(w.shape, 0.05, "float32") for w in layer.get_weights()])
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (1, 22, 26, 3)).astype("float32")
    masks = rng.integers(0, 3, (1, 22, 26)).astype("int32")
    loss = SegmentationLoss(normalize=False)
    with tf.GradientTape() as tape:
        value = loss(masks, model(images, training=True))
    variables = model.trainable_variables
    grads = dict(zip([v.path for v in variables], tape.gradient(value, variables), strict=True))
    before = {v.path: v.numpy() for v in model.variables}
    model.compile(CaffeSGD(1e-4, momentum=MOMENTUM, l2_weight_decay=0.1), loss=loss)
    model.train_on_batch(images, masks)
    assert not any("upscore" in path for path in grads)
    for variable in model.variables:
        if variable.path not in grads:  # the fixed upsamplings
            np.testing.assert_array_equal(variable.numpy(), before[variable.path])
            continue
        mults = (2, 0) if variable.name == "bias" else (1, 1)
        want = caffe_sgd(before[variable.path], [grads[variable.path].numpy()], 1e-4, MOMENTUM, 0.1, *mults)
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-7, err_msg=variable.path)


def test_caffe_sgd_saves_in_dot_keras_and_continues_identically(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(CaffeSGD(0.01, momentum=0.9, l2_weight_decay=0.01, bias_lr_mult=3.0), loss="mse")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 3))
    model.train_on_batch(x, y)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.optimizer, CaffeSGD)
    assert reloaded.optimizer.get_config() == model.optimizer.get_config()
    assert CaffeSGD.from_config(model.optimizer.get_config()).get_config() == model.optimizer.get_config()
    model.train_on_batch(x, y)
    reloaded.train_on_batch(x, y)  # the velocity came back with the file
    for a, b in zip(model.get_weights(), reloaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


class Stop(Exception):
    pass


def test_caffe_sgd_resumes_from_backup_and_restore_as_if_never_stopped(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")

    def fresh():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
        model.compile(CaffeSGD(0.05, momentum=0.9, l2_weight_decay=0.05), loss="mse")
        return model

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Stop

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    with pytest.raises(Stop):
        fresh().fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[backup, StopAfterTwo()])
    resumed = fresh()
    history = resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[backup])
    assert history.epoch == [2, 3]  # continued after the second epoch
    assert int(resumed.optimizer.iterations) == 4
    for a, b in zip(uninterrupted.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # the velocity was restored too
