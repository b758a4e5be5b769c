"""Which encoder layer to read: a linear probe per layer on cached states.

    python -m crab.bin.layer_probe --cache DIR --branch speech \\
        --fold data/fold1 [--fold data/fold2 ...]

For every fold (a directory with ``train.json`` and ``valid.json``), fits a
class-balanced logistic regression on each layer's mean-pooled, standardized
states of the training utterances and prints each layer's validation UAR, then
the mean over folds (``--train_splits train valid --eval_split test``: the
baseline of a layer read on test, for comparison only). Only training and
validation data are read, so the layer it picks (``layer_weighting: <index>``)
is chosen without the test sets. The cache must hold every layer (extracted
with ``layer_weighting: weighted_sum``).
"""

import argparse
import os

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from crab import cli
from crab.data import load_manifest
from crab.features import FeatureCache
from crab.metrics import compute_scores


def pooled(cache, manifest, branch):
    """``(utterances, layers, dim)`` mean-pooled states and the labels."""
    entries = load_manifest(manifest)
    states = np.stack([cache.get(utt, branch).mean(dim=0).numpy() for utt in entries])
    return states, [entry["emo"] for entry in entries.values()]


def probe_fold(cache, fold_dir, branch, train_splits=("train",), eval_split="valid", seed=0):
    """UAR on ``eval_split`` of each layer's probe trained on ``train_splits`` of one fold."""
    parts = [pooled(cache, os.path.join(fold_dir, f"{split}.json"), branch) for split in train_splits]
    x_train, y_train = np.concatenate([x for x, _ in parts]), [y for _, ys in parts for y in ys]
    x_valid, y_valid = pooled(cache, os.path.join(fold_dir, f"{eval_split}.json"), branch)
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    scores = []
    for layer in range(x_train.shape[1]):
        scaler = StandardScaler().fit(x_train[:, layer])
        model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
        model.fit(scaler.transform(x_train[:, layer]), y_train)
        predicted = model.predict(scaler.transform(x_valid[:, layer]))
        result = compute_scores([index[y] for y in y_valid], [index[p] for p in predicted], len(classes))
        scores.append(result["UAR"])
    return scores


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument(
        "--cache", required=True, help="feature cache holding every layer (crab.bin.extract_features)"
    )
    parser.add_argument(
        "--branch", choices=("speech", "text"), default="speech", help="encoder whose layers are probed"
    )
    parser.add_argument(
        "--fold", action="append", required=True, help="directory with train.json and valid.json"
    )
    parser.add_argument(
        "--train_splits",
        nargs="+",
        default=["train"],
        help="manifests the probe trains on (e.g. train valid, as a no-validation baseline)",
    )
    parser.add_argument(
        "--eval_split",
        default="valid",
        help="manifest it is scored on; anything but valid reads held-out data, not for choosing",
    )
    args = parser.parse_args(argv)
    cache = FeatureCache(args.cache)
    if args.branch not in cache.branches or cache.branches[args.branch]["layer_weighting"] != "weighted_sum":
        raise SystemExit(
            f"{args.cache} must hold every {args.branch} layer (extract with layer_weighting: weighted_sum)"
        )
    table = np.array(
        [probe_fold(cache, fold, args.branch, args.train_splits, args.eval_split) for fold in args.fold]
    )
    print(f"UAR on {args.eval_split}, probe trained on {' + '.join(args.train_splits)}")
    print("| fold | " + " | ".join(f"layer {i}" for i in range(table.shape[1])) + " |")
    print("|---" * (table.shape[1] + 1) + "|")
    for fold, row in zip(args.fold, table, strict=True):
        print(f"| {os.path.basename(fold.rstrip('/'))} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    mean = table.mean(axis=0)
    print("| mean | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
    print(f"best layer on {args.eval_split}: {int(mean.argmax())} (mean UAR {mean.max():.3f})")


if __name__ == "__main__":
    main()
