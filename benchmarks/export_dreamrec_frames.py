"""Write a dataset under diffrec's leave-one-out split in the pickled frames that DreamRec's public code reads.

So that the authors' ``DreamRec.py`` trains and evaluates on exactly our split: every prefix of
every user's training part is a training row, the validation row is the training part with the
validation target, the test row adds that target to the history. Item ids become 0..N-1 and the
padding id is N (the code's ``item_num``); histories keep their last ``--max-len`` items and are
padded on the right, with ``len_seq`` their length, as its ``pad_history`` does. Needs pandas.

    python benchmarks/export_dreamrec_frames.py --data ../shared/datasets/beauty --out DREAMREC_CHECKOUT/data/beauty
    cd DREAMREC_CHECKOUT && python DreamRec.py --data beauty --epoch 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffrec.data import load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/beauty")
    parser.add_argument("--out", type=Path, required=True, help="folder for train_data.df, val_data.df, test_data.df and data_statis.df")
    parser.add_argument("--max-len", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        import pandas as pd
    except ImportError:
        print("error: this export needs pandas (pip install pandas)", file=sys.stderr)
        return 2
    data = load_dataset(args.data)
    pad, length = data.num_items, args.max_len

    def row(history: list[int], target: int) -> dict:
        items = [i - 1 for i in history][-length:]
        return {"seq": items + [pad] * (length - len(items)), "len_seq": len(items), "next": int(target) - 1}

    train, valid, test = [], [], []
    valid_targets, test_targets = data.valid_targets(), data.test_targets()
    for u in range(data.num_users):
        part = data.train_part(u)
        train.extend(row(part[:k], part[k]) for k in range(1, len(part)))
        valid.append(row(data.valid_input(u), valid_targets[u]))
        test.append(row(data.test_input(u), test_targets[u]))
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; give an empty or new folder", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train).to_pickle(args.out / "train_data.df")
    pd.DataFrame(valid).to_pickle(args.out / "val_data.df")
    pd.DataFrame(test).to_pickle(args.out / "test_data.df")
    pd.DataFrame({"seq_size": [length], "item_num": [pad]}).to_pickle(args.out / "data_statis.df")
    print(f"{len(train)} training rows, {len(valid)} validation and {len(test)} test users, {pad} items -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
