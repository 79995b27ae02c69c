"""The GPU implementations of bitnet's autograd primitives, one module per family of ops; each
registers its classes with ``bitnet.gpu.dispatch.implements`` (every module here is imported when
the first op runs on "cuda")."""
