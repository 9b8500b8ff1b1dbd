#!/usr/bin/env python3
"""Shrinks each checked-in corpus to a small set that keeps its coverage.

`cargo fuzz cmin` keeps every file that adds a feature in size order, which leaves hundreds of
files; this picks a greedy set cover of the same edges instead, capped at MAX_FILES per target.

    scripts/fuzz-minimize.py FUZZ_DIR [TARGET...]   (FUZZ_DIR: proto/fuzz or relay/fuzz;
                                                    after `cargo fuzz build` there)

For proto, afterwards re-add the seeds (`cargo test -p proto write_seed_corpus -- --ignored`) so
the replay test keeps its valid inputs even where the cover dropped them.
"""
import os
import shutil
import subprocess
import sys
import tempfile

MAX_FILES = 50


def features(binary, corpus):
    """Per-file edge sets, from a libFuzzer merge control file."""
    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "control")
        into = os.path.join(tmp, "into")
        os.mkdir(into)
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={control}", into, corpus],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(control) as f:
            lines = f.read().splitlines()
    n = int(lines[0])
    paths = lines[2 : 2 + n]
    feats = {}
    for line in lines[2 + n :]:
        parts = line.split()
        if parts and parts[0] == "FT":
            feats[paths[int(parts[1])]] = set(map(int, parts[2:]))
    return feats


def cover(feats):
    """Greedy set cover; ties go to the smaller file."""
    left = set().union(*feats.values()) if feats else set()
    chosen = []
    while left and len(chosen) < MAX_FILES:
        best = max(feats, key=lambda p: (len(feats[p] & left), -os.path.getsize(p)))
        gain = feats[best] & left
        if not gain:
            break
        chosen.append(best)
        left -= gain
    return chosen, len(left)


def main():
    triple = subprocess.run(
        ["rustc", "-vV"], capture_output=True, text=True, check=True
    ).stdout.split("host: ")[1].split()[0]
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    here = os.path.abspath(sys.argv[1])
    bins = os.path.join(here, "target", triple, "release")
    targets = sys.argv[2:] or sorted(os.listdir(os.path.join(here, "corpus")))
    for t in targets:
        corpus = os.path.join(here, "corpus", t)
        feats = features(os.path.join(bins, t), corpus)
        chosen, missed = cover(feats)
        keep = {os.path.basename(p) for p in chosen}
        for name in os.listdir(corpus):
            if name not in keep:
                os.remove(os.path.join(corpus, name))
        size = sum(os.path.getsize(os.path.join(corpus, n)) for n in keep)
        print(f"{t}: kept {len(keep)} of {len(feats)} files, {size} bytes, {missed} edges dropped")


if __name__ == "__main__":
    main()
