"""Helpers the tests share: tiny training sets and recipes, fake files, servers and run directories."""
