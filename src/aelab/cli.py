"""The ``aelab`` command line: train, eval, sample, reconstruct, interpolate, traverse, latent-map,
probe, anomaly, datasets, presets, models."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import AelabError, ConfigError

# flag -> config path; each is also settable in a YAML config under that path
TRAIN_FLAGS = {
    "model": "model.name", "dataset": "data.name", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "latent_dim": "model.latent_dim", "hidden": "model.hidden_dims",
    "likelihood": "model.likelihood", "beta": "model.beta", "seed": "train.seed",
    "device": "device", "arch": "model.arch", "weight_decay": "train.weight_decay",
    "sparsity": "model.sparsity", "noise": "model.noise", "contractive": "model.contractive",
    "kl_warmup": "model.kl_warmup", "k": "model.k", "grad_clip": "train.grad_clip",
    "exclude_class": "data.exclude_class", "labels": "data.labels",
    "precision": "train.precision", "matmul_precision": "train.matmul_precision",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _setup_logging()
    try:
        if getattr(args, "dataset", None) and getattr(args, "data_dir", None):
            raise ConfigError("give --dataset or --data-dir, not both")
        return args.func(args) or 0
    except AelabError as e:
        _say_error(str(e))
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            sys.stdout.flush()                   # a torchrun process: end now, without taking
            sys.stderr.flush()                   # down the process group (see train.train)
            os._exit(2)
        return 2
    except KeyboardInterrupt:
        print("aelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `aelab presets | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so that Python's exit flush cannot fail again
        return 141


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2, like every other aelab error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aelab", description="Train, evaluate and use autoencoders and VAEs.")
    p.add_argument("--version", action="version", version=f"aelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model and write a run folder",
                       description="Train a model. With no flags: the vae-mnist preset on MNIST "
                                   "(or the bundled mnist-5k sample when MNIST cannot be had).")
    t.add_argument("--preset", help="start from a preset (see `aelab presets`)")
    t.add_argument("--config", help="YAML config (e.g. a run's config.yaml); flags override it")
    t.add_argument("--model", help="model family (see `aelab models`)")
    t.add_argument("--dataset", help="registered dataset (see `aelab datasets`)")
    t.add_argument("--data-dir", help="your own data: a folder of MNIST-named IDX files, NumPy "
                   "files (train.npz, train_images.npy, or one .npz/.npy file) or image files "
                   "(train/ and test/; class subfolders give labels)")
    t.add_argument("--exclude-class", metavar="C", help="leave class C out of the training and "
                   "validation splits (not test): a run for anomaly detection (aelab anomaly)")
    t.add_argument("--labels", metavar="N", help="m2: keep the labels of N training images (N / "
                   "classes of each, drawn with the seed) and hide the rest: semi-supervised")
    t.add_argument("--epochs", help="passes over the training split")
    t.add_argument("--batch-size", help="images per step")
    t.add_argument("--lr", help="Adam learning rate")
    t.add_argument("--latent-dim", help="size of the code")
    t.add_argument("--hidden", help="encoder hidden sizes, comma separated: 512,256")
    t.add_argument("--arch", help="network: mlp | conv (stride-2 convolutions, channels in "
                   "model.conv_channels)")
    t.add_argument("--weight-decay", help="Adam's L2 weight decay (default 0)")
    t.add_argument("--likelihood", help="vae family: bernoulli | continuous-bernoulli | gaussian | mse")
    t.add_argument("--beta", help="vae: weight of the KL term")
    t.add_argument("--sparsity", help="ae: penalty on the code, l1:WEIGHT or kl:RHO:WEIGHT")
    t.add_argument("--noise", help="ae: denoising corruption in training, gaussian:SIGMA, "
                   "mask:P or saltpepper:P")
    t.add_argument("--contractive", help="ae: weight of the encoder Jacobian's squared "
                   "Frobenius norm")
    t.add_argument("--kl-warmup", help="vae family: epochs over which the KL weight rises to beta")
    t.add_argument("--k", help="iwae: importance samples per image")
    t.add_argument("--seed", help="random seed (data split, order, initialisation, noise)")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--binarize", action="store_true", help="dynamic binarisation of the inputs")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value by dotted path, e.g. data.val_fraction=0.2 (repeatable)")
    t.add_argument("--grad-clip", help="clip the gradients' global norm (default 0: off)")
    t.add_argument("--precision", help="fp32 (default) | bf16: the training forward under bf16 "
                   "autocast; weights, Adam and evaluation stay fp32 (pays on GPUs with bf16)")
    t.add_argument("--matmul-precision", help="highest (default: fp32 products) | high (TF32 on "
                   "GPUs that have it) | medium (bf16 products with fp32 sums: CPUs with AMX, "
                   "GPUs); torch.set_float32_matmul_precision while training, not in evaluation")
    t.add_argument("--compile", action="store_true", help="torch.compile the training forward "
                   "(compiles in the first steps; pays on GPUs, not on small CPU models)")
    t.add_argument("--out", help="run folder (default runs/<preset-or-model>-<time>)")
    t.add_argument("--resume", metavar="RUN", help="continue a stopped run from its last "
                   "checkpoint, with its config (only --epochs may be changed)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    t.add_argument("--nproc", type=_positive_int, help="train in N processes with DDP: runs "
                   "`torchrun --standalone --nproc_per_node N -m aelab train ...` (gloo on CPU, "
                   "nccl on CUDA)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="metrics of a trained run on its test (or validation) split")
    _run_args(e)
    e.add_argument("--split", choices=("test", "val"), default="test")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--seed", type=_seed, default=0, help="seed of the z draws (ELBO, nll_iw) and "
                   "of --binarize fixed")
    e.add_argument("--iw-samples", type=_positive_int, metavar="K", help="also nll_iw, the "
                   "K-sample importance weighted estimate of -log p(x) in nats per image, and "
                   "bits_per_dim (vae, iwae, cvae; the literature uses K = 5000)")
    e.add_argument("--binarize", choices=("none", "fixed"), default="none", help="fixed: "
                   "evaluate on one Bernoulli draw of every pixel seeded by --seed, the same "
                   "binary images for every model (binarised-MNIST figures); default none")
    e.add_argument("--anomaly-class", type=int, metavar="C", help="AUROC of class C vs the rest "
                   "by the --score of each image")
    e.add_argument("--score", choices=("recon", "elbo"), help="with --anomaly-class: recon "
                   "(reconstruction error, the default) or elbo (-ELBO, vae family)")
    e.add_argument("--fid", action="store_true", help="also sample quality (families that "
                   "sample; labelled data): frechet_distance of samples to the split's images in "
                   "the features of a classifier trained once per dataset and cached, its "
                   "classifier_accuracy, sample_class_entropy and sample_marginal_entropy")
    e.add_argument("--fid-samples", type=_positive_int, metavar="N", help="samples drawn for "
                   "--fid (default: as many as the split has images)")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="decode images drawn from a VAE's prior")
    s.add_argument("run", help="run folder")
    s.add_argument("-n", type=_positive_int, default=64, help="number of images (default 64)")
    s.add_argument("-o", "--output", default="samples.png", help="PNG grid (default samples.png), "
                   "or .npy / .npz: the images themselves, float32 (N, C, H, W) in [0, 1]")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--label", type=int, help="class to draw (label-conditional models: cvae)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="originals above their reconstructions, as a PNG")
    _run_args(r)
    r.add_argument("--split", choices=("test", "val"), default="test")
    r.add_argument("-n", type=_positive_int, default=32, help="number of images (default 32)")
    r.add_argument("-o", "--output", default="reconstructions.png", help="PNG file")
    r.add_argument("--noise", help="corrupt the inputs first (gaussian:SIGMA, mask:P, "
                   "saltpepper:P): rows of noisy inputs, outputs and clean targets")
    r.add_argument("--seed", type=_seed, default=0, help="seed of the corruption")
    r.set_defaults(func=cmd_reconstruct)

    ip = sub.add_parser("interpolate", help="decode the codes on the line between two images",
                        description="Encode images I and J of a split (model.embed: the posterior "
                                    "mean for the vae family), decode STEPS codes on the line "
                                    "between them, both ends included, and write one row: image I, "
                                    "the decoded steps, image J.")
    _run_args(ip)
    ip.add_argument("--from", dest="source", type=int, required=True, metavar="I",
                    help="index of the first image in the split")
    ip.add_argument("--to", dest="target", type=int, required=True, metavar="J",
                    help="index of the last image in the split")
    ip.add_argument("-n", type=_positive_int, default=10, metavar="STEPS",
                    help="decoded codes, both ends included (default 10)")
    ip.add_argument("--slerp", action="store_true", help="vae family: a spherical path instead "
                    "of the straight line (White 2016)")
    ip.add_argument("--split", choices=("test", "val"), default="test")
    ip.add_argument("--label", type=int, help="cvae: the class every step is decoded as "
                    "(default: image I's)")
    ip.add_argument("-o", "--output", default="interpolation.png", help="PNG file "
                    "(default interpolation.png)")
    ip.set_defaults(func=cmd_interpolate)

    tv = sub.add_parser("traverse", help="decode one latent dimension at a time over a range",
                        description="One row per latent dimension: that dimension moved from "
                                    "-RANGE to +RANGE around a code (image I's, or 0, the prior "
                                    "mean of the vae family), the others kept, decoded.")
    _run_args(tv)
    tv.add_argument("--image", type=int, metavar="I", help="start from image I's code (default: "
                    "0, the prior mean; an ae needs an image)")
    tv.add_argument("--split", choices=("test", "val"), default="test")
    tv.add_argument("--dims", type=_positive_int, metavar="N", help="the first N dimensions, one "
                    "row each (default: all, at most 10)")
    tv.add_argument("--range", type=float, default=3.0, metavar="R", help="offsets from -R to +R "
                    "added to the dimension (default 3)")
    tv.add_argument("-n", type=_positive_int, default=9, metavar="STEPS", help="values per row "
                    "(default 9)")
    tv.add_argument("--label", type=int, help="cvae: the class to decode as (default: image I's, "
                    "else 0)")
    tv.add_argument("-o", "--output", default="traversal.png", help="PNG file "
                    "(default traversal.png)")
    tv.set_defaults(func=cmd_traverse)

    lm = sub.add_parser("latent-map", help="2-D map of a split's codes coloured by class",
                        description="Scatter the codes of a split's images coloured by class: the "
                                    "codes themselves when they are 2-D, else their PCA and t-SNE "
                                    "projections. A 2-D code also gets the decoded manifold: a grid "
                                    "of codes (vae family: N(0, 1) quantiles 0.05..0.95; ae: the "
                                    "range of the codes), decoded.")
    _run_args(lm)
    lm.add_argument("--split", choices=("test", "val"), default="test")
    lm.add_argument("--method", choices=("auto", "pca", "tsne"), default="auto",
                    help="auto (default): the codes when 2-D, else PCA and t-SNE side by side")
    lm.add_argument("--n-images", type=_positive_int, default=2000, metavar="N",
                    help="images spread through the split (default 2000)")
    lm.add_argument("--seed", type=_seed, default=0, help="t-SNE's random state")
    lm.add_argument("--manifold", metavar="PNG", help="2-D codes: where the decoded grid goes "
                    "(default: OUTPUT with -manifold before .png)")
    lm.add_argument("--grid", type=_grid_size, default=20, metavar="G",
                    help=f"manifold: G x G codes (default 20, at most {MAX_GRID})")
    lm.add_argument("--label", type=int, help="cvae: the class the manifold is decoded as "
                    "(default 0)")
    lm.add_argument("-o", "--output", default="latent-map.png", help="PNG file "
                    "(default latent-map.png)")
    lm.set_defaults(func=cmd_latent_map)

    pr = sub.add_parser("probe", help="few-label accuracy of a classifier on the run's codes, "
                        "against the same classifier on pixels",
                        description="Encode the training and test images (posterior means), fit a "
                                    "logistic-regression and a k-NN classifier on N labelled training "
                                    "images (N / n_classes of each class) and report their test "
                                    "accuracy, next to the same two classifiers on raw pixels.")
    _run_args(pr)
    pr.add_argument("--labels", type=_labels_arg, default=100, metavar="N",
                    help="labelled training images, a multiple of the number of classes, or 'all' "
                         "(default 100: 10 per class)")
    pr.add_argument("--split", choices=("test", "val"), default="test", help="split to score")
    pr.add_argument("--k", type=_positive_int, default=5, help="neighbours of the k-NN "
                    "classifier, capped at N (default 5)")
    pr.add_argument("--seed", type=_seed, default=0, help="seed of the labelled subset")
    pr.add_argument("--repeats", type=_positive_int, default=1, metavar="R",
                    help="average over R labelled subsets (seeds seed..seed+R-1); mean and std")
    pr.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    pr.set_defaults(func=cmd_probe)

    sub.add_parser("datasets", help="known datasets and whether each is available here"
                   ).set_defaults(func=cmd_datasets)

    a = sub.add_parser("anomaly", help="per-image anomaly scores as a CSV, the top-k as a PNG",
                       description="Score every image of a split (default: the run's test split; "
                                   "every image with --data-dir or --dataset) by how badly the "
                                   "model explains it; higher is more anomalous.")
    _run_args(a)
    a.add_argument("--split", choices=SPLITS_OR_ALL, help=SPLIT_OR_ALL_HELP)
    a.add_argument("--score", choices=("recon", "elbo"), default="recon",
                   help="recon: squared error per pixel, mean over pixels (default); "
                        "elbo: -ELBO in nats per image (vae, iwae)")
    a.add_argument("-o", "--output", default="scores.csv", help="CSV of index,label,score "
                   "(default scores.csv)")
    a.add_argument("--png", default="top.png", help="PNG grid of the top-k images, most "
                   "anomalous first (default top.png)")
    a.add_argument("--top", type=_positive_int, default=32, help="images in the PNG (default 32)")
    a.add_argument("--seed", type=_seed, default=0, help="seed of the z draws in the ELBO")
    a.set_defaults(func=cmd_anomaly)

    c = sub.add_parser("encode", help="the code of every image of a split, as .npz, .npy or .csv",
                       description="Encode every image of a split (default: the run's test split; "
                                   "every image with --data-dir or --dataset) "
                                   "with the trained encoder: the code (ae), posterior mean (vae "
                                   "family) or quantised vectors (vqvae), for use elsewhere.")
    _run_args(c)
    c.add_argument("--split", choices=SPLITS_OR_ALL, help=SPLIT_OR_ALL_HELP)
    c.add_argument("-o", "--output", default="codes.npz", help=".npz (arrays codes, index, labels "
                   "if known), .npy (codes only) or .csv (index,label,z0,z1,...); default codes.npz")
    c.set_defaults(func=cmd_encode)

    sub.add_parser("presets", help="the presets and what they set").set_defaults(func=cmd_presets)
    sub.add_parser("models", help="the model families").set_defaults(func=cmd_models)
    return p


SPLITS_OR_ALL = ("test", "val", "train", "all")
SPLIT_OR_ALL_HELP = ("test, val, train, or all: every image in file order (training file, then "
                     "test file); default test, or all with --data-dir or --dataset")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--dataset", help="evaluate on another registered dataset")
    p.add_argument("--data-dir", help="evaluate on your own data (IDX, NumPy or image files, "
                   "as train --data-dir)")
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    p.add_argument("--device", default="auto")


# ---------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .config import resolve_config
    from .train import train
    launch = args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ
    overrides = {path: getattr(args, flag) for flag, path in TRAIN_FLAGS.items()
                 if getattr(args, flag) is not None}
    if args.dataset is not None:
        overrides.update({"data.fallback": False, "data.data_dir": None})
    if args.binarize:
        overrides["data.binarize"] = True
    if args.compile:
        overrides["train.compile"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    progress = False if args.no_progress else None
    if args.resume:
        extra = sorted(k for k in overrides if k != "train.epochs")
        if extra or args.preset or args.config or args.out:
            raise ConfigError("--resume continues a run with its own config; only --epochs may "
                              "be given with it")
        from .runs import read_run_info
        read_run_info(args.resume)                   # a clear error for a folder that is not a run
        cfg = resolve_config(config_file=str(Path(args.resume) / "config.yaml"), overrides=overrides)
    else:
        cfg = resolve_config(args.preset, args.config, overrides)
    if launch:      # bad config or data: one line here, rather than once per process under torchrun
        from .data import load_splits
        load_splits(cfg.data, cfg.train.seed)
        return _launch_torchrun(args.nproc, args.argv)
    train(cfg, out=args.out, progress=progress, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    if args.anomaly_class is not None:
        if args.iw_samples or args.binarize != "none" or args.fid:
            raise ConfigError("--anomaly-class reports only the AUROC; leave out --iw-samples, "
                              "--binarize and --fid")
        return cmd_eval_anomaly(args)
    if args.score:
        raise ConfigError("--score chooses the anomaly score of --anomaly-class; add --anomaly-class")
    from .evaluate import UNITS, binarize_fixed, evaluate, iw_nll, require_likelihood
    if args.fid_samples and not args.fid:
        raise ConfigError("--fid-samples sets the samples of --fid; add --fid")
    cfg, model, split = _load_for_eval(args)
    if args.iw_samples:
        require_likelihood(model)                # fail before the other metrics are computed
    if args.fid:
        from .sample_quality import check_sample_quality
        check_sample_quality(model, split)
    real_split = split                           # --fid compares samples with the real images
    if args.binarize == "fixed":
        split = binarize_fixed(split, args.seed)
    metrics = evaluate(model, split, args.batch_size, seed=args.seed)
    settings = {"binarize": args.binarize, "seed": args.seed}
    if args.iw_samples:
        progress = sys.stderr.isatty() and args.iw_samples >= 100   # never on stdout
        metrics.update(iw_nll(model, split, args.iw_samples, args.batch_size, seed=args.seed,
                              progress=progress))
        settings["iw_samples"] = args.iw_samples
    if args.fid:
        metrics.update(_sample_quality(args, cfg, model, real_split))
        settings["fid_samples"] = args.fid_samples or len(real_split)
    result = {"run": str(args.run), "model": cfg.model.name, "split": args.split,
              "dataset": cfg.data.data_dir or cfg.data.name, "n_images": len(split), **settings,
              **metrics, "units": {k: UNITS[k] for k in metrics if k in UNITS}}
    if args.json:
        print(json.dumps(result))
    else:
        binarized = f", fixed binarisation (seed {args.seed})" if args.binarize == "fixed" else ""
        samples = f", {args.iw_samples} importance samples" if args.iw_samples else ""
        print(f"{cfg.model.name} run {args.run}, {args.split} split of {result['dataset']} "
              f"({len(split)} images){binarized}{samples}")
        width = max(map(len, metrics), default=0)
        for name, value in metrics.items():
            print(f"  {name:<{width}} {value:>12.6g}   {UNITS.get(name, '')}")
    return 0


def _sample_quality(args, cfg, model, split) -> dict[str, float]:
    """eval --fid: the cached classifier of the run's data (trained first if need be), then the
    sample-quality figures against ``split``."""
    from .sample_quality import classifier_for, sample_quality
    clf = classifier_for(cfg.data, split.images.device,
                         announce=lambda line: print(f"aelab: {line}", file=sys.stderr))
    figures = sample_quality(model, clf.net, split, args.fid_samples, args.batch_size, args.seed)
    return {"frechet_distance": figures.pop("frechet_distance"),
            "classifier_accuracy": clf.test_accuracy, **figures}


def cmd_sample(args) -> int:
    import torch
    from .export import IMAGE_FORMATS, check_suffix, write_images
    from .runs import load_run
    from .train import resolve_device
    from .viz import save_grid
    device = resolve_device(args.device)
    cfg, model, _ = load_run(args.run, device)
    if not model.can_sample:
        raise ConfigError(f"a {cfg.model.name} has no prior to sample from; train a vae")
    labels = None                     # a cvae without --label cycles through its classes
    if args.label is not None:
        if not model.needs_labels:
            raise ConfigError(f"a {cfg.model.name} is not label-conditional, so --label has no "
                              "meaning; train a cvae")
        if not 0 <= args.label < cfg.model.n_classes:
            raise ConfigError(f"--label {args.label} is outside this {cfg.model.name}'s classes "
                              f"0..{cfg.model.n_classes - 1}")
        labels = torch.full((args.n,), args.label, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if check_suffix(args.output, IMAGE_FORMATS) == ".png":
        save_grid(model.sample(args.n, generator=gen, labels=labels), args.output)
    else:
        write_images(args.output, model.sample(args.n, generator=gen, labels=labels), labels)
    which = f" of class {args.label}" if labels is not None else ""
    print(f"wrote {args.n} samples{which} to {args.output}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch
    from .corruption import corrupt, parse_corruption
    from .viz import save_reconstructions, save_rows
    noise = parse_corruption(args.noise) if args.noise else None   # a bad spec fails before loading
    _check_output(args.output)
    _, model, split = _load_for_eval(args)
    x, y = split.spread(args.n), split.spread_labels(args.n)
    if noise is None:
        with torch.no_grad():
            save_reconstructions(x, model.reconstruct(x, y), args.output)
        print(f"wrote {len(x)} originals and reconstructions to {args.output}")
        return 0
    gen = torch.Generator(device=x.device).manual_seed(args.seed)
    noisy = corrupt(x, noise, generator=gen)
    with torch.no_grad():
        x_hat = model.reconstruct(noisy, y)
    mse = (x_hat - x).square().mean().item()      # per pixel, outputs against the clean images
    noisy_mse = (noisy - x).square().mean().item()
    save_rows([noisy, x_hat, x], args.output)
    print(f"wrote {len(x)} noisy inputs ({args.noise}), reconstructions and clean targets to "
          f"{args.output}; recon_mse vs clean {mse:.6g} (noisy inputs {noisy_mse:.6g})")
    return 0


def cmd_interpolate(args) -> int:
    import torch
    from . import pictures
    from .viz import save_titled_grid
    _check_output(args.output)
    if args.n < 2:
        raise ConfigError(f"-n {args.n}: the steps include both ends, so at least 2")
    cfg, model, split = _load_for_eval(args)
    pictures.check_continuous(model, "interpolate")
    if args.slerp and not pictures.has_normal_prior(model):
        raise ConfigError(f"--slerp keeps codes near the sphere where a Gaussian prior's codes "
                          f"lie, and this {cfg.model.name} has no such prior; leave it out")
    i = pictures.check_index(split, args.source, "--from", args.split)
    j = pictures.check_index(split, args.target, "--to", args.split)
    x, y = pictures.images_at(split, [i, j])
    z = pictures.embed(model, x, y)
    codes = (pictures.slerp if args.slerp else pictures.lerp)(z[0], z[1], args.n)
    labels = pictures.condition(model, args.label, None if y is None else int(y[0]), args.n)
    row = torch.cat([x[:1], pictures.decode(model, codes, labels), x[1:]])
    path = "spherical path" if args.slerp else "straight line"
    as_class = "" if labels is None else f", decoded as class {int(labels[0])}"
    ticks = [f"image {i}", *(f"{t:.2f}" for t in torch.linspace(0, 1, args.n).tolist()), f"image {j}"]
    save_titled_grid(row, args.output, f"Interpolation from image {i} to image {j} on a {path}"
                     f"{as_class}\n{pictures.describe(args.run, cfg, args.split)}", len(row),
                     xticks=ticks, xlabel=f"t: codes from z_{i} (t = 0) to z_{j} (t = 1); the "
                     "original images at both ends")
    print(f"wrote image {i}, {args.n} decoded codes on the {path} and image {j} to {args.output}")
    return 0


def cmd_traverse(args) -> int:
    import math
    import torch
    from . import pictures
    from .viz import save_titled_grid
    _check_output(args.output)
    if args.n < 2:
        raise ConfigError(f"-n {args.n}: a row runs from -RANGE to +RANGE, so at least 2 values")
    if not (math.isfinite(args.range) and args.range > 0):
        raise ConfigError(f"--range must be a positive number, got {args.range}")
    cfg, model, split = _load_for_eval(args)
    pictures.check_continuous(model, "traverse")
    d = cfg.model.latent_dim
    n_dims = min(d, 10) if args.dims is None else args.dims
    if n_dims > d:
        raise ConfigError(f"--dims {n_dims}, but this {cfg.model.name}'s code has {d} dimensions")
    image_label = None
    if args.image is None:
        if not pictures.has_normal_prior(model):
            raise ConfigError(f"this {cfg.model.name} has no prior mean to start from; give --image I")
        base, start = torch.zeros(d), "0, the prior mean"
    else:
        i = pictures.check_index(split, args.image, "--image", args.split)
        x, y = pictures.images_at(split, [i])
        base, start = pictures.embed(model, x, y)[0], f"the code of image {i}"
        image_label = None if y is None else int(y[0])
    values = torch.linspace(-args.range, args.range, args.n)
    codes = pictures.traversal(base, list(range(n_dims)), values)
    labels = pictures.condition(model, args.label, image_label, len(codes))
    as_class = "" if labels is None else f", decoded as class {int(labels[0])}"
    save_titled_grid(pictures.decode(model, codes, labels), args.output,
                     f"Traversal of dimensions 0..{n_dims - 1} around {start}{as_class}\n"
                     f"{pictures.describe(args.run, cfg, args.split)}", args.n,
                     xticks=[f"{v:+.3g}" for v in values.tolist()],
                     xlabel="offset added to the row's dimension (the others stay fixed)",
                     yticks=[f"z[{k}]" for k in range(n_dims)], ylabel="latent dimension")
    print(f"wrote {n_dims} dimensions x {args.n} values around {start} to {args.output}")
    return 0


def cmd_latent_map(args) -> int:
    from . import pictures
    from .viz import save_latent_map, save_titled_grid
    _check_output(args.output)
    out = Path(args.output)
    manifold = args.manifold or str(out.with_name(f"{out.stem}-manifold.png"))
    _check_output(manifold)
    if Path(manifold).resolve() == out.resolve():
        raise ConfigError(f"--manifold and --output are the same file: {args.output}")
    cfg, model, split = _load_for_eval(args)
    x, y = split.spread(args.n_images).cpu(), split.spread_labels(args.n_images)
    if len(x) < 3:
        raise ConfigError(f"a map needs at least 3 images, got {len(x)} of the {args.split} split")
    codes = pictures.embed(model, x, y, args.batch_size)
    dim = codes.shape[1]
    if dim < 2:
        raise ConfigError(f"a 2-D map needs codes of at least 2 dimensions; this "
                          f"{cfg.model.name}'s have {dim}")
    if bool((codes == codes[0]).all()):          # e.g. a collapsed vqvae codebook
        raise ConfigError(f"the {len(x)} codes are all the same point: there is nothing to map")
    decodes = dim == 2 and model.continuous_code
    if (args.manifold or args.label is not None) and dim != 2:
        raise ConfigError(f"--manifold and --label are for the decoded grid of a 2-D code; this "
                          f"{cfg.model.name}'s code has {dim} dimensions")
    if args.manifold:
        pictures.check_continuous(model, "the manifold")
    grid_labels = pictures.condition(model, args.label, 0, args.grid ** 2)
    method = args.method if args.method != "auto" else ("codes" if dim == 2 else "both")
    points, panels = codes.numpy(), []
    if method == "codes":
        panels.append((points, "the codes", "z[0]", "z[1]"))
    if method in ("pca", "both"):
        projected, share = pictures.pca_2d(points)
        panels.append((projected, "PCA of the codes", f"PC 1 ({share[0]:.0%} of the variance)",
                       f"PC 2 ({share[1]:.0%} of the variance)"))
    if method in ("tsne", "both"):
        panels.append((pictures.tsne_2d(points, args.seed), "t-SNE of the codes", "t-SNE 1",
                       "t-SNE 2"))
    labels = None if y is None else y.cpu().numpy()
    coloured = "coloured by class" if labels is not None else "no labels"
    about = pictures.describe(args.run, cfg, args.split)
    save_latent_map(panels, labels, args.output, f"Codes of {len(x)} images ({dim}-D), "
                    f"{coloured}\n{about}")
    print(f"wrote the map of {len(x)} {args.split} codes ({', '.join(p[1] for p in panels)}) to "
          f"{args.output}")
    if not decodes:
        return 0
    if pictures.has_normal_prior(model):
        xs = ys = pictures.prior_quantiles(args.grid)
        how = "z at the N(0, 1) quantiles 0.05..0.95"
    else:
        xs, ys = pictures.code_range(codes, args.grid)
        how = "z over the range of the codes"
    as_class = "" if grid_labels is None else f", class {int(grid_labels[0])}"
    save_titled_grid(pictures.decode(model, pictures.manifold(xs, ys), grid_labels), manifold,
                     f"Decoded manifold, {args.grid} x {args.grid} codes: {how}{as_class}\n{about}",
                     args.grid, xticks=[f"{v:.2g}" for v in xs.tolist()], xlabel="z[0]",
                     yticks=[f"{v:.2g}" for v in ys.flip(0).tolist()], ylabel="z[1]", scale=1)
    print(f"wrote the decoded {args.grid} x {args.grid} manifold to {manifold}")
    return 0


def cmd_probe(args) -> int:
    from dataclasses import replace
    from .data import check_shape, load_splits
    from .probe import check_unconditional, probe, settings, units
    from .runs import load_run
    from .train import resolve_device
    device = resolve_device(args.device)
    cfg, model, _ = load_run(args.run, device)
    check_unconditional(model)                   # refuse a cvae before loading any data
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    elif args.dataset:
        cfg.data.name, cfg.data.data_dir, cfg.data.fallback = args.dataset, None, False
    # the probe asks about every class, even one a run was trained without, and draws its own
    # labelled images from all the training labels, even where the run trained with few (--labels)
    data = replace(cfg.data, exclude_class=None, labels=None)
    splits = load_splits(data, cfg.train.seed, device)
    train, test = splits.train, getattr(splits, args.split)
    if len(test) == 0:
        raise ConfigError(f"the {args.split} split of this run is empty")
    check_shape(train, cfg.model.input_shape)
    n_labels = None if args.labels == "all" else args.labels
    res = probe(model, train, test, n_labels, args.seed, args.repeats, args.k, args.batch_size)
    per_seed = res.pop("per_seed")
    figures = {k: v for k, v in res.items() if k.startswith(("codes_", "pixels_"))}
    result = {"run": str(args.run), "model": cfg.model.name, "dataset": cfg.data.data_dir or cfg.data.name,
              "split": args.split, "n_images": len(test), "train_split": "train", "n_train": len(train),
              "labels": args.labels, "n_labelled": res["n_labelled"], "n_classes": res["n_classes"],
              "labels_per_class": res["n_labelled"] // res["n_classes"] if n_labels else None,
              "seed": args.seed, "repeats": args.repeats, "seeds": res["seeds"],
              "code_dim": res["code_dim"], "features": {"codes": "model.embed: the posterior mean "
              "(the code itself for deterministic families)", "pixels": "raw pixels, flattened, in [0, 1]"},
              "classifiers": settings(res["k"]), **figures, "per_seed": per_seed, "units": units()}
    if args.json:
        print(json.dumps(result))
        return 0
    labelled = (f"all {res['n_labelled']} training images" if n_labels is None else
                f"{n_labels} labelled training images ({result['labels_per_class']} per class, of "
                f"{len(train)}), seed {args.seed}")
    subsets = "" if args.repeats == 1 else f", mean ± std over {args.repeats} subsets"
    print(f"{cfg.model.name} run {args.run}: {labelled}; {args.split} split of "
          f"{result['dataset']} ({len(test)} images)")
    print(f"accuracy: fraction of the {args.split} images classified correctly{subsets}")
    knn = f"{res['k']}-NN"
    print(f"  {'features':<18} {'linear':>17} {knn:>17}")
    for f, label in (("codes", f"codes ({res['code_dim']} dims)"),
                     ("pixels", f"pixels ({train.images[0].numel()} dims)")):
        cells = [f"{res[f'{f}_{c}']:.4f}" + (f" ± {res[f'{f}_{c}_std']:.4f}" if args.repeats > 1
                                             else "") for c in ("linear", "knn")]
        print(f"  {label:<18} {cells[0]:>17} {cells[1]:>17}")
    return 0


def _labels_arg(text: str) -> int | str:
    """--labels: a positive integer or 'all'."""
    return text if text == "all" else _positive_int(text)


def cmd_datasets(args) -> int:
    from .datasets import DATASETS, availability
    for name, spec in DATASETS.items():
        print(f"{name:<14} {spec.description}\n{'':<14} {availability(name)}")
    print(f"{'--data-dir':<14} your own data: MNIST-named IDX files (train-images-idx3-ubyte[.gz], ...),\n"
          f"{'':<14} NumPy files (train.npz / test.npz with images and labels, train_images.npy, ...),\n"
          f"{'':<14} or image files (train/ and test/, one subfolder per class for labels)")
    return 0


def cmd_anomaly(args) -> int:
    from .anomaly import anomaly_scores, top_k, write_scores_csv
    from .viz import save_grid
    from .export import check_suffix
    _check_output(args.png)
    check_suffix(args.output, (".csv",))         # so never the same file as the .png
    _, model, split = _load_for_eval(args)
    scores = anomaly_scores(model, split, args.score, args.batch_size, seed=args.seed)
    top = top_k(scores, args.top)
    write_scores_csv(args.output, scores, split.labels)
    save_grid(split.images[top.to(split.images.device)].float().div(255), args.png)
    print(f"{len(scores)} images of {_split_words(args.split)}, score {args.score}: mean "
          f"{scores.mean():.6g}, max {scores.max():.6g} (image {int(top[0])}); wrote {args.output} "
          f"and the top {len(top)} to {args.png}")
    return 0


def cmd_encode(args) -> int:
    from .export import CODE_FORMATS, check_suffix, write_codes
    from .probe import encode_split
    check_suffix(args.output, CODE_FORMATS)      # a bad name fails before any loading
    _, model, split = _load_for_eval(args)
    codes = encode_split(model, split, args.batch_size)
    write_codes(args.output, codes, split.labels)
    print(f"wrote the {codes.shape[1]}-number codes of the {len(codes)} images of "
          f"{_split_words(args.split)} to {args.output}")
    return 0


def cmd_eval_anomaly(args) -> int:
    """``eval --anomaly-class C``: AUROC of the score (--score) for class C against the others."""
    from .anomaly import SCORE_UNITS, anomaly_scores, auroc
    from .errors import DataError
    c = args.anomaly_class
    cfg, model, split = _load_for_eval(args)
    if split.labels is None:
        raise DataError(f"--anomaly-class needs labels, and the {args.split} split has none")
    positives = (split.labels == c).cpu().numpy()
    if not positives.any():
        raise DataError(f"class {c} does not occur in the {args.split} split")
    excluded = cfg.data.exclude_class
    if excluded != c:
        trained = "on every class" if excluded is None else f"without class {excluded}"
        print(f"aelab: warning: --anomaly-class {c}, but this run was trained {trained}",
              file=sys.stderr)
    score = args.score or "recon"
    scores = anomaly_scores(model, split, score, args.batch_size, seed=args.seed)
    result = {"run": str(args.run), "model": cfg.model.name, "split": args.split,
              "dataset": cfg.data.data_dir or cfg.data.name, "n_images": len(split),
              "anomaly_class": c, "n_anomalies": int(positives.sum()), "score": score,
              "auroc": auroc(scores.numpy(), positives),
              "units": {"auroc": "area under the ROC curve, 0 to 1 (0.5: chance), of the score "
                                 f"for class {c} against the rest",
                        "score": SCORE_UNITS[score]}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.model.name} run {args.run}, {args.split} split of {result['dataset']}: class "
              f"{c} ({result['n_anomalies']} of {len(split)} images) against the rest, {score} score")
        print(f"  auroc {result['auroc']:.4f}   {result['units']['auroc']}")
    return 0


def cmd_presets(args) -> int:
    from .config import DEFAULT_PRESET, list_presets
    for name, tree in list_presets().items():
        default = "  (default)" if name == DEFAULT_PRESET else ""
        print(f"{name}{default}\n  {tree.get('description', '')}")
        for section in ("data", "model", "train"):
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in (tree.get(section) or {}).items())
            print(f"  {section}: {values}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models, model_class
    for name in list_models():
        doc = (model_class(name).__doc__ or "").strip().splitlines()
        print(f"{name:<8} {doc[0] if doc else ''}")
    return 0


# ---------------------------------------------------------------- helpers


def _load_for_eval(args):
    """Load a run and the split to evaluate on (its own data unless --dataset/--data-dir)."""
    from dataclasses import replace
    from .data import as_split, check_labels, check_shape, load_raw_for, load_splits
    from .datasets import file_order
    from .runs import load_run
    from .train import resolve_device
    device = resolve_device(args.device)
    cfg, model, _ = load_run(args.run, device)
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    elif args.dataset:
        cfg.data.name, cfg.data.data_dir, cfg.data.fallback = args.dataset, None, False
    # on other data the run's exclude_class (which described its training data) does not apply
    data = replace(cfg.data, exclude_class=None) if args.data_dir or args.dataset else cfg.data
    data = replace(data, labels=None)            # hidden training labels: val and test keep theirs
    if args.split is None:                       # encode, anomaly: all of a user's other data
        args.split = "all" if args.data_dir or args.dataset else "test"
    if args.split == "all":
        split = as_split(*file_order(load_raw_for(data)), device)
    else:
        split = getattr(load_splits(data, cfg.train.seed, device), args.split)
    if len(split) == 0:
        raise ConfigError(f"the {args.split} split of this run is empty")
    check_shape(split, cfg.model.input_shape)
    if model.needs_labels:
        check_labels(split, cfg.model.n_classes, f"{args.split} split")
    return cfg, model, split


def _split_words(split: str) -> str:
    return "the data, in file order" if split == "all" else f"the {split} split"


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run this same command in ``nproc`` processes under torchrun (in this process: its
    launcher, not its command line); 0, 2 when the processes stopped on an aelab error, else 1."""
    import tempfile
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    rest, skip = [], False
    for arg in argv:                             # drop --nproc N / --nproc=N
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    elastic_log = logging.getLogger("torch.distributed.elastic")
    level = elastic_log.level
    elastic_log.setLevel(logging.CRITICAL)       # its lines on a failure: said below, shorter
    with tempfile.TemporaryDirectory() as errors:
        os.environ[ERRORS_DIR] = errors
        try:
            run(get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}",
                                              "-m", "aelab", *rest]))
        except ChildFailedError as e:            # torchrun's own traceback adds nothing here
            failed = {rank: f.exitcode for rank, f in e.failures.items()}
            if 2 not in failed.values():
                print("aelab: error: " + ", ".join(f"process {rank} exited with {code}"
                      for rank, code in sorted(failed.items())), file=sys.stderr)
                return 1
            if failed.get(0) != 2:               # process 0 said nothing: say the others' error
                said = sorted(Path(errors).glob("rank-*.txt"))
                print("aelab: error: " + (said[0].read_text() if said else "a process failed"),
                      file=sys.stderr)
            return 2
        finally:
            os.environ.pop(ERRORS_DIR, None)
            elastic_log.setLevel(level)
    return 0


ERRORS_DIR = "AELAB_LAUNCHER_ERRORS"   # where processes other than 0 leave their error for the launcher


def _say_error(message: str) -> None:
    """'aelab: error: ...' on stderr; under ``--nproc``, process 0 says it, and each other process
    leaves its own to the launcher, which says it only if process 0 did not fail the same way."""
    rank, errors = int(os.environ.get("RANK", 0)), os.environ.get(ERRORS_DIR)
    if rank and errors:
        (Path(errors) / f"rank-{rank}.txt").write_text(message)
    else:
        print(f"aelab: error: {message}", file=sys.stderr)


def _check_output(path: str) -> None:
    """A PNG output: a .png name in a folder that exists."""
    from .export import check_suffix
    check_suffix(path, (".png",))


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2**32), the range every generator here takes."""
    value = _int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


MAX_GRID = 100    # a manifold of G x G decoded images: 100 x 100 is already a 2800-pixel PNG


def _grid_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_GRID:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_GRID}, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _fmt(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


class _MaxLevel(logging.Filter):
    def __init__(self, level):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno < self.level


def _setup_logging() -> None:
    """INFO lines (epoch lines, summaries) on stdout; warnings on stderr."""
    logger = logging.getLogger("aelab")
    if logger.handlers:
        return
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_MaxLevel(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
