"""Makes tests/data/format1.zarr with the format-1 store code of main (commit 654b666).

Run with main's ``w2v2ser.store`` importable first on sys.path, e.g.
``git archive 654b666 store w2v2ser/__init__.py | tar -x -C /tmp/v1`` and a package folder
``/tmp/v1/pkg/w2v2ser`` holding that ``__init__.py`` and ``store/``; then
``PYTHONPATH=/tmp/v1/pkg python tests/data/make_format1_store.py tests/data/format1.zarr``.
"""

import sys

import numpy as np
from w2v2ser.store import FORMAT_VERSION, FeatureSpec, StoreWriter, Utterance

assert FORMAT_VERSION == 1, FORMAT_VERSION
W2V = FeatureSpec(name="w2v", dim=6, layers=4, frame_rate=50.0, dtype="float16",
                  config={"model": "tiny"}, layer_names=("proj", "t1", "t2", "t3"))
LLD = FeatureSpec(name="lld", dim=5, layers=None, frame_rate=100.0, dtype="float32", config={"set": "x"})
rng = np.random.default_rng(0)
utts = [Utterance(id=f"u{i}", path=f"/audio/u{i}.wav", speaker="AB"[i % 2], label=["angry", "sad"][i % 2],
                  corpus="synthetic", extra={"i": str(i)}) for i in range(5)]
lengths = [3, 17, 0, 9, 4]
writer = StoreWriter(sys.argv[1], chunk_frames={"w2v": 8, "lld": 8})
rows = writer.plan(utts, num_samples=[16000, 16000, 16000, None, 16000], features=[W2V, LLD],
                   capacities={"w2v": lengths, "lld": lengths}, failures={3: "bad header"})
for i, row in enumerate(rows):
    if i == 3:
        continue
    feats = {"w2v": rng.normal(2, 1, (lengths[i], 4, 6)), "lld": rng.normal(0, 3, (lengths[i], 5))}
    if i == 4:
        writer.record_failure(row, reason="lld crashed", feature="lld")
        feats.pop("lld")
    writer.write_utterance(row, feats, audio_sha256=f"{i:064x}", duration=lengths[i] / 50)
writer.finalize()
writer.close()
