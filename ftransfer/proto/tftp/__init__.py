"""TFTP's sans-IO core: ``packets`` (codec and option negotiation), ``transfer``
(block sender and receiver), ``client`` (the request handshake), ``netascii``."""
