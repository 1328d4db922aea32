"""w2v2ser: speech emotion recognition with wav2vec 2.0 embeddings.

Stage 1 (:mod:`w2v2ser.extract`) writes features into a Zarr feature store
(:mod:`w2v2ser.store`); stage 2 (:mod:`w2v2ser.train`, :mod:`w2v2ser.evaluate`)
reads that store and fits shallow Keras heads. The store is the only contract
between the stages.
"""

from ._common import ConfigError, DataError, DiskFullError, W2v2serError

__version__ = "0.3.0"  # 0.3: run keys leave out where the stores lie; 0.2: store format 3 (CRC-32C checksums)

__all__ = ["ConfigError", "DataError", "DiskFullError", "W2v2serError", "__version__"]
