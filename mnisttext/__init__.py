"""mnisttext: handwritten digits as text lines, a character transformer, generate-and-rerank.

    import mnisttext
    model = mnisttext.load()                        # the shipped model and reranker
    best = model.generate(3).best                   # 8 lines of the best 3s out of 64
    label, levels = mnisttext.decode(best[0])

`decode`/`encode` need only numpy; `load` imports torch on first use.
"""
__version__ = "0.2.0"

from .text import decode, encode  # noqa: E402  (numpy only: no torch import)

__all__ = ["__version__", "load", "decode", "encode", "examples", "Model", "Generation"]


def __getattr__(name):
    if name in ("load", "examples", "Model", "Generation"):
        from . import api       # torch is imported here, on first use, not by `import mnisttext`
        return getattr(api, name)
    raise AttributeError(f"module 'mnisttext' has no attribute {name!r}")
