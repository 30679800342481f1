"""The sans-IO protocol core: no sockets, clocks, files or global randomness."""
