"""A three-layer ConvNet: conv - relu - 2x2 max pool - affine - relu - affine - softmax."""

from __future__ import annotations

import numpy as np

from mlcore.nn import layer_utils
from mlcore.nn.layers import affine_backward, affine_forward, softmax_loss


class ThreeLayerConvNet:
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax, on inputs (N, C, H, W).

    The conv layer has num_filters square filters of side filter_size, stride 1 and padding
    (filter_size - 1) // 2; the pool is 2x2 with stride 2. Weights are drawn from a normal
    distribution with standard deviation weight_scale (np.random.default_rng(seed)), biases
    are zero, and every parameter is stored in ``params`` (W1, b1, W2, b2, W3, b3) as dtype.

    seed=None draws the seed from numpy's global generator, ``int(np.random.randint(2**31))``
    (one draw, at construction), so the course's ``np.random.seed(231)`` before building a
    model gives the same weights every time. An explicit seed leaves np.random untouched.
    """

    def __init__(
        self,
        input_dim=(3, 32, 32),
        num_filters=32,
        filter_size=7,
        hidden_dim=100,
        num_classes=10,
        weight_scale=1e-3,
        reg=0.0,
        dtype=np.float32,
        seed=None,
    ):
        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {input_dim!r}")
        C, H, W = input_dim
        pad = (filter_size - 1) // 2
        conv_h, conv_w = 1 + H + 2 * pad - filter_size, 1 + W + 2 * pad - filter_size
        if min(num_filters, filter_size, hidden_dim, num_classes) < 1 or min(conv_h, conv_w) < 2:
            raise ValueError(
                f"input_dim {tuple(input_dim)} with filter_size {filter_size} leaves no 2x2 "
                f"pooling window (or a size is < 1: num_filters {num_filters}, hidden_dim "
                f"{hidden_dim}, num_classes {num_classes})"
            )
        pool_h, pool_w = 1 + (conv_h - 2) // 2, 1 + (conv_w - 2) // 2

        self.input_dim = tuple(input_dim)
        self.reg = reg
        self.dtype = dtype
        self.conv_param = {"stride": 1, "pad": pad}
        self.pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}

        if seed is None:
            seed = int(np.random.randint(2**31))  # noqa: NPY002 - the course seeds it
        rng = np.random.default_rng(seed)
        layers = [  # (weight shape, bias size) per layer
            ((num_filters, C, filter_size, filter_size), num_filters),
            ((num_filters * pool_h * pool_w, hidden_dim), hidden_dim),
            ((hidden_dim, num_classes), num_classes),
        ]
        self.params = {}
        for i, (w_shape, b_size) in enumerate(layers, start=1):
            self.params[f"W{i}"] = (weight_scale * rng.standard_normal(w_shape)).astype(dtype)
            self.params[f"b{i}"] = np.zeros(b_size, dtype=dtype)

    @classmethod
    def from_params(cls, params: dict, input_dim, reg: float = 0.0) -> ThreeLayerConvNet:
        """Rebuild a model from its ``params`` (e.g. read back from an ``.npz``); the layer
        sizes and dtype are taken from the arrays' shapes."""
        missing = {"W1", "b1", "W2", "b2", "W3", "b3"} - set(params)
        if missing:
            raise ValueError(f"params is missing {sorted(missing)}")
        W1, W2, W3 = params["W1"], params["W2"], params["W3"]
        model = cls(
            input_dim=tuple(int(d) for d in input_dim),
            num_filters=W1.shape[0],
            filter_size=W1.shape[2],
            hidden_dim=W2.shape[1],
            num_classes=W3.shape[1],
            reg=reg,
            dtype=W1.dtype.type,
            weight_scale=0.0,
            seed=0,  # the weights are replaced below: no draw from np.random's global state
        )
        for name, value in model.params.items():
            if params[name].shape != value.shape:
                raise ValueError(
                    f"params[{name!r}] has shape {params[name].shape}, expected {value.shape}"
                )
            model.params[name] = np.asarray(params[name], dtype=W1.dtype)
        return model

    def loss(self, X, y=None):
        """X: (N, C, H, W) matching input_dim; y: (N,) labels or None.

        Without y returns the class scores (N, num_classes); with y returns (loss, grads),
        grads keyed like params, the loss including 0.5 * reg * sum(W ** 2) over W1..W3.
        """
        X = self._check_X(X)
        p = self.params

        h1, cache1 = layer_utils.conv_relu_pool_forward(
            X, p["W1"], p["b1"], self.conv_param, self.pool_param
        )
        h2, cache2 = layer_utils.affine_relu_forward(h1, p["W2"], p["b2"])
        scores, cache3 = affine_forward(h2, p["W3"], p["b3"])
        if y is None:
            return scores

        data_loss, dscores = softmax_loss(scores, y)
        weights = [p["W1"], p["W2"], p["W3"]]
        loss = data_loss
        if self.reg:  # (reg = 0: no passes over the weights)
            loss += 0.5 * self.reg * sum(float(np.sum(w * w)) for w in weights)

        grads = {}
        dh2, grads["W3"], grads["b3"] = affine_backward(dscores, cache3)
        dh1, grads["W2"], grads["b2"] = layer_utils.affine_relu_backward(dh2, cache2)
        # the data needs no gradient: the first conv skips its dx
        _, grads["W1"], grads["b1"] = layer_utils.conv_relu_pool_backward(
            dh1, cache1, need_dx=False
        )
        if self.reg:
            for name in ("W1", "W2", "W3"):
                grads[name] = grads[name] + self.reg * p[name]
        return float(loss), grads

    def predict(self, X, batch_size=100):
        """X: (N, C, H, W). Returns the predicted labels (N,), computed batch_size at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        X = self._check_X(X)
        if len(X) == 0:
            return np.zeros(0, dtype=np.intp)
        batches = [self.loss(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
        return np.concatenate([np.argmax(s, axis=1) for s in batches])

    def _check_X(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 4 or X.shape[1:] != self.input_dim:
            raise ValueError(
                f"X must have shape (N, {', '.join(map(str, self.input_dim))}) to match "
                f"input_dim, got {X.shape}"
            )
        return X.astype(self.dtype, copy=False)
