"""Test support library: real PostgreSQL clusters, TLS material and client-driver runners (no mocks)."""
