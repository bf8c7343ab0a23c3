"""Adapters to the frameworks apps already use; each needs its own extra (``hydrahead[...]``)."""
