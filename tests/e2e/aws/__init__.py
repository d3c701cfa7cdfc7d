"""Test support for Bunsui on AWS: a local API Gateway, the flow harness."""
