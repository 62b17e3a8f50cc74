"""`CaffeSGD`: Caffe's SGD solver as a Keras optimizer (L2 decay inside the momentum, bias multipliers).

Caffe's `SGDSolver` (src/caffe/solvers/sgd_solver.cpp) updates every learnable blob as

    g = dL/dw + weight_decay * decay_mult * w          # Regularize: L2 added to the gradient
    h = momentum * h + base_lr * lr_mult * g           # ComputeUpdateValue: the history
    w = w - h                                          # Net::Update

and the reference's nets give each convolution `param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2,
decay_mult=0)]`: kernels at the base rate with decay, biases at twice the rate without decay. Layers with
`lr_mult=0` (the fixed bilinear upsamplings) are not trainable in Keras, so no optimizer touches them.

Keras's own `weight_decay` is decoupled: each step first shrinks `w` by `learning_rate * weight_decay * w`,
outside the momentum. Inside the momentum (as here) the decay term is accumulated by the history like a
gradient, summing to `1 / (1 - momentum)` times itself: with momentum 0.99 the same `weight_decay` number
decays about 100x more than Keras's decoupled form.
"""

from __future__ import annotations

import keras

# The reference's per-parameter multipliers: (lr_mult, decay_mult) of kernels and of biases.
KERNEL_MULTIPLIERS = (1.0, 1.0)
BIAS_MULTIPLIERS = (2.0, 0.0)


@keras.saving.register_keras_serializable(package="keras_fcn")
class CaffeSGD(keras.optimizers.SGD):
    """SGD with momentum and Caffe's L2 weight decay: the reference's solver.

    The update of a variable `w` with gradient `g` at learning rate `lr`, as Caffe's `SGDSolver`:

    ```python
    g = g + l2_weight_decay * decay_mult * w
    velocity = momentum * velocity - lr * lr_mult * g
    w = w + velocity
    ```

    Variables named `bias` (the biases of Keras's `Conv2D`/`Dense`) use `bias_lr_mult` and
    `bias_decay_mult` (2 and 0, as the reference's nets); every other variable uses 1 and 1. Keras's
    decoupled `weight_decay` is not available here: this optimizer's decay is the coupled one.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule` (Caffe's `base_lr`).
        momentum: float in [0, 1] (the reference: 0.99).
        l2_weight_decay: Caffe's `weight_decay` (the reference: 5e-4); 0 turns decay off.
        bias_lr_mult: learning-rate multiplier of biases.
        bias_decay_mult: weight-decay multiplier of biases.
        **kwargs: other arguments of `keras.optimizers.SGD` (`nesterov`, `clipnorm`, `name`, ...).

    Raises:
        ValueError: a negative decay or multiplier, or a decoupled `weight_decay`.

    Example:
    >>> optimizer = CaffeSGD(1e-10, momentum=0.99, l2_weight_decay=5e-4)
    >>> model.compile(optimizer, loss=SegmentationLoss(normalize=False))  # doctest: +SKIP
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.99,
        l2_weight_decay: float = 5e-4,
        bias_lr_mult: float = BIAS_MULTIPLIERS[0],
        bias_decay_mult: float = BIAS_MULTIPLIERS[1],
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "CaffeSGD applies Caffe's L2 decay (`l2_weight_decay`), not Keras's decoupled `weight_decay`. "
                f"Received: weight_decay={kwargs['weight_decay']}"
            )
        kwargs.pop("weight_decay", None)
        for key, value in (
            ("l2_weight_decay", l2_weight_decay),
            ("bias_lr_mult", bias_lr_mult),
            ("bias_decay_mult", bias_decay_mult),
        ):
            if not float(value) >= 0:
                raise ValueError(f"`{key}` must be a non-negative number. Received: {key}={value}")
        super().__init__(learning_rate=learning_rate, momentum=float(momentum), **kwargs)
        self.l2_weight_decay = float(l2_weight_decay)
        self.bias_lr_mult = float(bias_lr_mult)
        self.bias_decay_mult = float(bias_decay_mult)

    def multipliers(self, variable) -> tuple[float, float]:
        """`(lr_mult, decay_mult)` of a variable: the bias ones for variables named `bias`."""
        # A Keras variable's name is "bias"; the TensorFlow variable the TF backend updates is "conv/bias:0".
        if variable.name.split(":")[0].rsplit("/", 1)[-1] == "bias":
            return self.bias_lr_mult, self.bias_decay_mult
        return KERNEL_MULTIPLIERS

    def update_step(self, gradient, variable, learning_rate):
        lr_mult, decay_mult = self.multipliers(variable)
        gradient = keras.ops.cast(gradient, variable.dtype)
        decay = self.l2_weight_decay * decay_mult
        if decay:
            gradient = gradient + keras.ops.cast(decay, variable.dtype) * variable
        # The multiplied rate goes through SGD's own momentum update: velocity = m * v - rate * g; w += v.
        super().update_step(gradient, variable, keras.ops.cast(learning_rate, variable.dtype) * lr_mult)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            {
                "l2_weight_decay": self.l2_weight_decay,
                "bias_lr_mult": self.bias_lr_mult,
                "bias_decay_mult": self.bias_decay_mult,
            }
        )
        return config
