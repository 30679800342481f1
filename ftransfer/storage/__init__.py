"""Storage behind one port: ``base`` (the Store, Readable and Writer protocols),
``names`` (the only parser of peer names), ``atomic`` (whole-or-nothing writes),
``local`` (a directory, jailed with openat) and ``memory`` (tests, the simulator).

Import the submodules: this package imports nothing, so that the client, which needs
only ``atomic`` and ``names``, does not pay for the rest."""
