"""The four papers' methods, each a small set of pure functions over the shared parameter-tree algebra."""
