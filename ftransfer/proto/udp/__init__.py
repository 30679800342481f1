"""The UDP mode's sans-IO core: ``packets`` (the datagrams), ``handshake`` (the
client's request), ``endpoint`` (the server's validation and session table),
``session`` (one transfer), ``sender``/``receiver`` (selective repeat),
``congestion`` (BBR, NewReno), ``rangeset``."""
