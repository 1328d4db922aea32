from w2v2ser._cli import main

# Guarded: Dask and multiprocessing workers spawned from `python -m w2v2ser` re-import this module.
if __name__ == "__main__":
    raise SystemExit(main())
