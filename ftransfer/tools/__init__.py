"""Tools built on the library: the impairment relay."""
