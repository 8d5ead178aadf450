"""``mlcore predict``: score a file with a model from MLflow."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.errors import check_tracking_store, friendly_errors
from flows.cli.render import err_console


@friendly_errors
def predict(
    model_uri: Annotated[
        str, typer.Argument(help="Any MLflow model URI, e.g. models:/housing-regressor@champion.")
    ],
    input_file: Annotated[
        str, typer.Argument(metavar="INPUT", help="A numeric CSV (header optional) or a .npy file.")
    ],
    output: Annotated[
        str | None, typer.Option(help="Write the predictions as CSV here instead.")
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a model mlcore did not log. Loading an MLflow model can run code "
            "(unpickling, a models-from-code file), so by default only mlcore's own model "
            "kinds are loaded, checked before loading; use this only for a model whose "
            "source you trust.",
        ),
    ] = False,
) -> None:
    """Score INPUT with a model from MLflow: one prediction per line (or CSV to --output).
    Only models mlcore logged, unless --trust-model."""
    import numpy as np
    import pandas as pd

    from tasks.registry import predict_file

    if model_uri.startswith(("runs:/", "models:/")):
        check_tracking_store()

    pred = np.asarray(predict_file(model_uri, input_file, trust=trust_model))
    flat = pred.reshape(len(pred), -1)
    if output is not None:
        cols = (
            ["prediction"]
            if flat.shape[1] == 1
            else [f"prediction_{j}" for j in range(flat.shape[1])]
        )
        pd.DataFrame(flat, columns=cols).to_csv(output, index=False)
        err_console.print(f"{len(flat)} predictions written to {output}")
        return
    for row in flat:
        typer.echo(",".join(repr(v.item()) for v in row))
