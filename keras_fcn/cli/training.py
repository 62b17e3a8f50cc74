"""`keras-fcn train`, `evaluate`, `predict` and `demo`: a flag for every `TrainConfig` field, the verbs that
score and draw a model's predictions, and the end-to-end demo."""

from __future__ import annotations

import argparse

from keras_fcn.cli.common import (
    MODEL_HELP,
    CommandError,
    add_precision_flag,
    add_tiling_flags,
    class_names_for,
    data_options,
    load_model,
    tiling_from_args,
    with_precision,
)


def add_train(verbs) -> None:
    parser = verbs.add_parser(
        "train",
        help="train an FCN (checkpoints every epoch; rerun the same command to resume a killed run)",
        description="Train an FCN. Every TrainConfig field is a flag; --config loads a saved config.json "
        "first. Data specs: synthetic[:N], voc:ROOT, sbd:ROOT, folder:IMAGES,MASKS, folder:ROOT, tfds:NAME.",
    )
    parser.add_argument("--config", help="a config.json to start from (flags override it)")
    parser.add_argument(
        "--recipe", choices=_recipe_names(),
        help="train as the reference did on PASCAL VOC (solver, data, length, initialisation; flags override "
        "it), then score the final model on seg11valid next to the paper",
    )  # fmt: skip
    _add_config_flags(parser)
    parser.set_defaults(run=run_train)


def _recipe_names() -> list[str]:
    from keras_fcn.recipes import RECIPES

    return list(RECIPES)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    import dataclasses
    import typing

    from keras_fcn.config import TrainConfig

    kinds = typing.get_type_hints(TrainConfig)  # the fields' real types (the module postpones annotations)
    for item in dataclasses.fields(TrainConfig):
        value = item.default_factory() if item.default is dataclasses.MISSING else item.default
        text = f"{item.metadata.get('help', '')} (default: {value})".replace("%", "%%")
        if item.name == "data_options":
            parser.add_argument(
                "--data-option", dest="data_options", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                help="extra source argument (JSON value), e.g. image_size=[96,96]; repeatable",
            )  # fmt: skip
            continue
        # Unset flags keep the config's value (a --config file's, or the field's default).
        parser.add_argument(
            "--" + item.name.replace("_", "-"), default=argparse.SUPPRESS, help=text, **_flag_kind(kinds[item.name])
        )


def _flag_kind(kind) -> dict:
    """argparse's arguments for a config field of type `kind`: a switch, a list or one value."""
    import types
    import typing

    union = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
    options = list(typing.get_args(kind)) if union else [kind]
    optional = type(None) in options
    options = [option for option in options if option is not type(None)]
    if options == [bool]:
        return {"action": argparse.BooleanOptionalAction}
    sequences = [option for option in options if typing.get_origin(option) is tuple]
    if sequences:  # tuple[int, ...], tuple[float, float]: values after the flag (or one name, when str is allowed)
        element = typing.get_args(sequences[0])[0]
        others = [option for option in options if option not in sequences]
        return {"nargs": "+", "metavar": "V", "type": _converter([element, *others], optional)}
    return {"type": _converter(options, optional)}


def _converter(types: list, optional: bool):
    """Reads a flag's text as the first of `types` it fits (str last); `none` is None for optional fields."""
    ordered = sorted(types, key=lambda t: t is str)
    names = " or ".join(t.__name__ for t in ordered) + (" or none" if optional else "")

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        for cast in ordered:
            try:
                return cast(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"expected {names}, received {text!r}")

    convert.__name__ = names  # argparse names the type in its error messages
    return convert


def _config_from_args(args):
    from keras_fcn.config import TrainConfig

    recipe = getattr(args, "recipe", None)
    if recipe and getattr(args, "config", None):
        raise CommandError("--recipe and --config each give a whole run: give one of them")
    values = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    if recipe:
        from keras_fcn.recipes import recipe_config

        values = recipe_config(recipe).to_dict()
    for key, value in vars(args).items():
        if key in ("config", "recipe", "verb", "run"):
            continue
        if key == "data_options":
            value = {**values.get("data_options", {}), **data_options(value)}
        values[key] = value
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None


def run_train(args) -> int:
    from keras_fcn.data import DataError
    from keras_fcn.training import train

    config = _config_from_args(args)
    try:
        if args.recipe:
            from keras_fcn.recipes import train_recipe

            result = train_recipe(args.recipe, config).train
        else:
            result = train(config)
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    last = {key: values[-1] for key, values in result.history.items() if values}
    shown = ", ".join(f"{key} {value:.4f}" for key, value in sorted(last.items()))
    print(f"keras_fcn: done after epoch {config.epochs}: {shown}")
    print(f"keras_fcn: best model {result.output_dir}/best.keras, final model {result.output_dir}/final.keras")
    return 0


def add_evaluate(verbs) -> None:
    parser = verbs.add_parser(
        "evaluate",
        help="pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and per-class IU",
        description="Evaluate a model at each image's full resolution and print the paper's four metrics "
        "and a per-class IU table.",
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--data", required=True, help="data spec, e.g. voc:VOCdevkit/VOC2012 or synthetic:100")
    parser.add_argument("--split", default="val", help="split (voc: also seg11valid); default: val")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="base seed of synthetic data")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the scores are still printed)")
    add_precision_flag(parser)
    add_tiling_flags(parser)
    parser.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    import json

    from keras_fcn.atomic import write_text
    from keras_fcn.data import DataError, data_errors, from_spec
    from keras_fcn.evaluation import evaluate
    from keras_fcn.metrics import format_scores

    model = with_precision(load_model(args.model), args.precision)
    num_classes = int(model.output_shape[-1])
    try:
        source = from_spec(
            args.data, args.split, num_classes=num_classes, seed=args.seed, **data_options(args.data_option)
        )
        with data_errors(source):
            result = evaluate(
                model, source, num_classes, limit=args.limit, verbose=not args.quiet, tiling=tiling_from_args(args)
            )
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"{args.model} on {source.name}: {result['num_images']} images at full resolution")
    print(format_scores(result, result["class_names"]))
    if args.json:
        keys = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "num_images")
        payload = {key: result[key] for key in keys}
        payload["per_class_iu"] = [None if v != v else float(v) for v in result["per_class_iu"]]
        write_text(args.json, json.dumps(payload, indent=2))
    return 0


def add_predict(verbs) -> None:
    parser = verbs.add_parser(
        "predict",
        help="segment images: a palette PNG of class ids and an overlay PNG with a legend for each",
        description="Segment images at full resolution. Class names come from --class-names or from a "
        "NAME.classes.txt beside NAME.keras (written by `keras-fcn convert --caffemodel`) or classes.txt beside "
        "the model (written by `keras-fcn train`).",
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--class-names", help="comma-separated class names for the legend")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or list of written files")
    add_precision_flag(parser)
    add_tiling_flags(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args) -> int:
    from keras_fcn.data import DataError
    from keras_fcn.predict import predict_files

    model = with_precision(load_model(args.model), args.precision)
    names = class_names_for(args.model, args.class_names, int(model.output_shape[-1]))
    tiling = tiling_from_args(args)
    try:
        written = predict_files(model, args.images, args.output, names, verbose=not args.quiet, tiling=tiling)
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    for classes_png, overlay_png in [] if args.quiet else written:
        print(f"{classes_png}  {overlay_png}")
    return 0


def add_demo(verbs) -> None:
    parser = verbs.add_parser(
        "demo",
        help="the whole chain on synthetic data: train an FCN-8s, evaluate, write overlays and curves",
        description="Synthetic shapes -> train an FCN-8s on a narrow VGG16-topology backbone -> evaluate on "
        "held-out images -> overlay PNGs and a training-curve plot. Nothing is downloaded; about 2.5 "
        "minutes on 2 CPU cores.",
    )
    parser.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    parser.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-serve", dest="serve", action="store_false",
        help="skip the last step: export, serve locally, query over gRPC and compare with the in-process model",
    )
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from keras_fcn.demo import run_demo

    sizes = {k: v for k, v in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch)) if v}
    run_demo(args.output, seed=args.seed, serve=args.serve, **sizes)
    return 0
