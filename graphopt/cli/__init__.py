"""The graphopt command line."""
