"""Every worker's engines: ``{case: {engine: fn}}``, fn one call of the case (a layer's
forward, backward or both, or one training step) on inputs built from the cases' seeds. numpy
(and torch) are passed in: a worker imports them only after its settings."""

from __future__ import annotations

from bench.layers.cases import CONV_SPECS, PHASES, POOL_SPECS, conv_data


def mlcore_engines(np):
    """{case: {"fast": fn}} for the mlcore worker: the fast layers and the training step."""
    from mlcore.nn import fast_layers as fl

    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        cp = {"stride": stride, "pad": pad}
        out, cache = fl.conv_forward_fast(x, w, b, cp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fns = (
            lambda x=x, w=w, b=b, cp=cp: fl.conv_forward_fast(x, w, b, cp),
            lambda d=dout, c=cache: fl.conv_backward_fast(d, c),
            lambda x=x, w=w, b=b, cp=cp, d=dout: fl.conv_backward_fast(
                d, fl.conv_forward_fast(x, w, b, cp)[1]
            ),
        )
        for what, fn in zip(PHASES, fns, strict=True):
            engines[f"{label} {what}"] = {"fast": fn}
    pool_engines(np, engines, "fast", fl.max_pool_forward_fast, fl.max_pool_backward_fast)
    for dtype, name in ((np.float32, "float32"), (np.float64, "float64")):
        step = make_mlcore_step(np, dtype)
        engines[f"ThreeLayerConvNet train step, batch 50, {name}"] = {"fast": step}
    return engines


def plain_engines(np):
    """{case: {"plain": fn}}: the mlcore worker's fast engines, for mlcore imported plainly."""
    return {case: {"plain": e["fast"]} for case, e in mlcore_engines(np).items()}


def pool_engines(np, engines, engine, forward, backward):
    """Add the POOL_SPECS cases (fwd, bwd, fwd+bwd) of one engine's max pooling to engines."""
    for k, (label, xs, size, s) in enumerate(POOL_SPECS):
        rng = np.random.default_rng(100 + k)
        x = rng.standard_normal(xs).astype(np.float32)
        pp = {"pool_height": size, "pool_width": size, "stride": s}
        out, cache = forward(x, pp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fns = (
            lambda x=x, pp=pp: forward(x, pp),
            lambda d=dout, c=cache: backward(d, c),
            lambda x=x, pp=pp, d=dout: backward(d, forward(x, pp)[1]),
        )
        for what, fn in zip(PHASES, fns, strict=True):
            engines[f"{label} {what}"] = {engine: fn}


def naive_engines(np):
    from mlcore.nn import layers as L

    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        cp = {"stride": stride, "pad": pad}
        out, cache = L.conv_forward_naive(x, w, b, cp)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        fns = (
            lambda x=x, w=w, b=b, cp=cp: L.conv_forward_naive(x, w, b, cp),
            lambda d=dout, c=cache: L.conv_backward_naive(d, c),
            lambda x=x, w=w, b=b, cp=cp, d=dout: L.conv_backward_naive(
                d, L.conv_forward_naive(x, w, b, cp)[1]
            ),
        )
        for what, fn in zip(PHASES, fns, strict=True):
            engines[f"{label} {what}"] = {"naive": fn}
    pool_engines(np, engines, "naive", L.max_pool_forward_naive, L.max_pool_backward_naive)
    return engines


def torch_engines(np, torch):
    F_ = torch.nn.functional
    engines = {}
    for k, (label, xs, ws, stride, pad) in enumerate(CONV_SPECS):
        rng, x, w, b = conv_data(np, xs, ws, k)
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        bt = torch.from_numpy(b).requires_grad_()
        graph = F_.conv2d(xt, wt, bt, stride=stride, padding=pad)
        dt_ = torch.from_numpy(rng.standard_normal(tuple(graph.shape)).astype(np.float32))

        def t_fwd(xt=xt, wt=wt, bt=bt, s=stride, p=pad):
            with torch.no_grad():
                F_.conv2d(xt, wt, bt, stride=s, padding=p)

        def t_bwd(graph=graph, dt_=dt_, ts=(xt, wt, bt)):
            for t in ts:
                t.grad = None
            graph.backward(dt_, retain_graph=True)

        def t_fb(xt=xt, wt=wt, bt=bt, s=stride, p=pad, dt_=dt_):
            for t in (xt, wt, bt):
                t.grad = None
            F_.conv2d(xt, wt, bt, stride=s, padding=p).backward(dt_)

        for what, fn in zip(PHASES, (t_fwd, t_bwd, t_fb), strict=True):
            engines[f"{label} {what}"] = {"torch": fn}
    for k, (label, xs, size, s) in enumerate(POOL_SPECS):
        rng = np.random.default_rng(100 + k)
        x = rng.standard_normal(xs).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        graph = F_.max_pool2d(xt, size, s)
        dt_ = torch.from_numpy(rng.standard_normal(tuple(graph.shape)).astype(np.float32))

        def p_fwd(xt=xt, k=size, s=s):
            with torch.no_grad():
                F_.max_pool2d(xt, k, s)

        def p_bwd(graph=graph, dt_=dt_, xt=xt):
            xt.grad = None
            graph.backward(dt_, retain_graph=True)

        def p_fb(xt=xt, k=size, s=s, dt_=dt_):
            xt.grad = None
            F_.max_pool2d(xt, k, s).backward(dt_)

        for what, fn in zip(PHASES, (p_fwd, p_bwd, p_fb), strict=True):
            engines[f"{label} {what}"] = {"torch": fn}
    for dtype, name in ((np.float32, "float32"), (np.float64, "float64")):
        engines[f"ThreeLayerConvNet train step, batch 50, {name}"] = {
            "torch": make_torch_step(torch, np, dtype)
        }
    return engines


def make_mlcore_step(np, dtype, N=50, seed=0):
    """One ThreeLayerConvNet training step as the Solver runs it: loss + grads + adam on
    every parameter (layer_utils' default conv / pool: the fast layers)."""
    from mlcore.nn.cnn import ThreeLayerConvNet
    from mlcore.nn.optim import adam

    model = ThreeLayerConvNet(dtype=dtype, weight_scale=1e-2, seed=seed)
    configs = {k: {"learning_rate": 1e-3} for k in model.params}
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, N)

    def step(X=X, y=y):
        loss, grads = model.loss(X, y)
        for k, g in grads.items():
            model.params[k], configs[k] = adam(model.params[k], g, configs[k])
        return loss

    return step


def make_torch_step(torch, np, dtype, N=50, seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, 7, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    model = model.to(tdtype)
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    X = torch.from_numpy(rng.standard_normal((N, 3, 32, 32)).astype(dtype))
    y = torch.from_numpy(rng.integers(0, 10, N))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = crit(model(X), y)
        loss.backward()
        opt.step()

    return step
