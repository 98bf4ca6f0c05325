"""The compiled-program cache: one build per key, bounded, keyed on what changes a program."""
import numpy as np

from modular import compiled


def test_builds_once_per_key_and_drops_the_least_recently_used():
    cache, built = compiled.ProgramCache(maxsize=2), []
    make = lambda name: lambda: built.append(name) or name
    assert cache.get("a", make("a")) == "a" and cache.get("a", make("a2")) == "a"
    cache.get("b", make("b"))
    cache.get("a", make("a3"))          # a is now the most recent
    cache.get("c", make("c"))           # drops b
    assert built == ["a", "b", "c"] and len(cache) == 2 and "b" not in cache and "a" in cache


def test_tree_signature_sees_structure_shape_and_dtype_not_values():
    t = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    same = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    assert compiled.tree_signature(t) == compiled.tree_signature(same)
    assert compiled.tree_signature(t) != compiled.tree_signature(dict(t, w=np.zeros((4, 2), np.float32)))
    assert compiled.tree_signature(t) != compiled.tree_signature(dict(t, b=np.zeros(2, np.float64)))
    assert compiled.tree_signature(t) != compiled.tree_signature({"w": t["w"], "c": t["b"]})
