#!/usr/bin/env python3
"""A toy training stage that leaves the files the worker's run-directory monitor collects
(see artifacts.toml): a plot, a checkpoint written in chunks, a config, a log file written
line by line, and metrics.json written twice (a new version is registered again).

Everything lands in $SCIENTIST_RUN_DIR; the script reports nothing itself. Settings:
  TOY_CHECKPOINT_MB   size of checkpoints/model.pt (default 3; above 8 the upload is multipart)
  TOY_WAIT_FILE       if set, wait for this file to exist before the second metrics.json
                      (the tests use it to see the first version registered first)
"""
import json
import os
import struct
import sys
import time
import zlib

RUN_DIR = os.environ["SCIENTIST_RUN_DIR"]
STAGE = os.environ.get("SCIENTIST_STAGE", "Stage_1")
CHECKPOINT_MB = int(os.environ.get("TOY_CHECKPOINT_MB", "3"))
WAIT_FILE = os.environ.get("TOY_WAIT_FILE")


def path(*parts):
    full = os.path.join(RUN_DIR, *parts)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    return full


def png(width, height, pixel):
    """A valid PNG of one colour, without any image library."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(pixel) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_metrics(values):
    # Written in place, as most training scripts do; the monitor waits for it to settle.
    with open(path("metrics.json"), "w") as out:
        json.dump(dict(values, stage=STAGE), out)


def main():
    with open(path("config.yaml"), "w") as config:
        config.write("model: tiny-mlp\nlr: 0.001\nepochs: 3\n")
    log = open(path("train.log"), "a", buffering=1)
    losses = []
    for epoch in range(1, 4):
        loss = round(1.0 / epoch, 4)
        losses.append(loss)
        log.write(f"epoch {epoch} loss {loss}\n")
    log.write("WARNING: the learning rate may be too high\n")
    write_metrics({"val_loss": losses[-1], "step": 3})

    with open(path("plots", "loss.png"), "wb") as plot:
        plot.write(png(32, 16, (40, 120, 200)))

    # A checkpoint written in 1 MiB chunks, like torch.save streaming a large state dict.
    chunk = bytes(range(256)) * 4096
    with open(path("checkpoints", "model.pt"), "wb") as checkpoint:
        for index in range(CHECKPOINT_MB):
            checkpoint.write(bytes([index % 256]) + chunk[1:])
            checkpoint.flush()
    log.write(f"saved checkpoints/model.pt ({CHECKPOINT_MB} MiB)\n")

    if WAIT_FILE:
        deadline = time.monotonic() + 60
        while not os.path.exists(WAIT_FILE):
            if time.monotonic() > deadline:
                sys.exit(f"{WAIT_FILE} did not appear within 60 s")
            time.sleep(0.02)
    write_metrics({"val_loss": 0.25, "accuracy": 0.91, "step": 4})
    log.write("done")  # the last line has no newline: the final sweep still reports it
    log.close()
    print(f"{STAGE}: wrote the plot, checkpoint, config, log and metrics into {RUN_DIR}")


if __name__ == "__main__":
    main()
