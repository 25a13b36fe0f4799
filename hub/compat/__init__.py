"""Every adjustment of a library's internals, one module per library, each pinned by a
test that fails when the upstream code it relies on changes (tests/unit/test_compat.py)."""
