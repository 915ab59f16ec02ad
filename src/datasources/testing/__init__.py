"""Test helpers for connector authors: the contract suite every connector passes."""
