"""Fakes for functional tests: a real-HTTP Bedrock Converse server and seeded run data."""
