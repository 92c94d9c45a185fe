"""One SFR-on run on the bundled digits, used by tests/test_multiprocess.py under 1 and 2 processes.

`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/mp_unlearn_helper.py MODEL_DIR OUT_DIR BATCH
[LAYOUT]` runs it on two CPU ranks (gloo); the test calls `run()` in-process with twice the batch for the
single-process reference. `LAYOUT` (see `LAYOUTS`) picks the set sizes: "even" (the default) divides every global
batch; "uneven" divides none, so the saliency passes end on short global batches (one rank with fewer rows, the
other with none) and the training loader pads its last forget batch. Each rank prints one `RESULT {...}` line: its
metrics, the rows and labels it saw in a gathered prediction pass, and every file write it made under OUT_DIR
(recorded by a Python audit hook, so a non-main rank's writes show).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree")
NUM_ROWS, NUM_TEST = 320, 90
# layout: (forget rows, saliency_max_batches). "even": 64 forget + 256 remain rows, two saliency batches per set.
# "uneven": 67 forget (2×32 + 3) + 253 remain (7×32 + 29) rows, a full saliency pass over each set.
LAYOUTS = {"even": (64, 2), "uneven": (67, None)}


def _record_writes(root: str, events: list) -> None:
    root = os.path.abspath(root)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and os.path.abspath(os.fsdecode(args[0])).startswith(root):
                events.append([event, os.fsdecode(args[0])])
        elif event in WRITE_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.path.abspath(os.fsdecode(args[0])).startswith(root):
                events.append([event, os.fsdecode(args[0])])

    sys.addaudithook(hook)


def make_split(layout: str = "even"):
    from hf_unlearn import ForgetRemainSplit, load_digits_dataset

    ds = load_digits_dataset()
    num_forget = LAYOUTS[layout][0]
    train = ds["train"].select(range(NUM_ROWS))
    return ForgetRemainSplit.from_dataset(
        train, forget_ids=list(range(0, 2 * num_forget, 2)), test_dataset=ds["test"].select(range(NUM_TEST))
    )


def run(model_dir: str, out_dir: str, batch: int, layout: str = "even") -> dict:
    """Unlearns, evaluates and saves; returns this rank's view of the run."""
    import torch

    from hf_unlearn import UnlearnConfig, Unlearner
    from hf_unlearn.evaluation import predict_logits
    from hf_unlearn.training import partial_state

    split = make_split(layout)
    config = UnlearnConfig(
        method="sfr_on",
        max_steps=4,
        per_device_train_batch_size=batch,
        learning_rate=2e-3,
        forget_alpha=1.0,
        temperature=2.0,
        remain_steps_per_forget=1,
        saliency_max_batches=LAYOUTS[layout][1],
        max_grad_norm=0.0,
        output_dir=out_dir,
        eval_batch_size=32,
        seed=0,
    )
    unlearner = Unlearner.from_pretrained(model_dir, config)
    result = unlearner.unlearn(split)
    metrics = unlearner.evaluate(split)
    _, labels = predict_logits(unlearner.family, unlearner.model, split.test_dataset, batch_size=32)
    unlearner.save_pretrained(os.path.join(out_dir, "model"))
    state = partial_state()
    return {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "metrics": metrics,
        "rows_seen": len(labels),
        "labels_in_order": labels.tolist() == list(split.test_dataset["label"]),
        "mask_fraction": result.mask_fraction,
        "work": result.work,
        "num_forget": len(split.forget),
        "num_remain": len(split.remain),
        "forget_losses": [h.get("forget_loss") for h in result.history],
        "weight_sum": float(sum(p.detach().double().abs().sum() for p in unlearner.model.parameters())),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    model_dir, out_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    layout = sys.argv[4] if len(sys.argv) > 4 else "even"
    writes: list = []
    _record_writes(out_dir, writes)
    view = run(model_dir, out_dir, batch, layout)
    view["writes"] = writes
    print("RESULT " + json.dumps(view), flush=True)
