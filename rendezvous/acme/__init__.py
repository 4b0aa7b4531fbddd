"""ACME (RFC 8555) certificates for the server's TLS listeners, as Go's autocert does it.

The parts: :mod:`.policy` (when to renew, backoff, which names; pure), :mod:`.cache` (the
cache directory, Go's ``autocert.DirCache`` layout), :mod:`.issue` (one order through
certbot's ``acme`` library), :mod:`.challenge` (the HTTP-01 listener), :mod:`.manager`
(the loop that ties them together). ``rendezvous.server`` starts them when
``acme_hostnames`` is set.
"""

from rendezvous.acme.issue import LETS_ENCRYPT, AcmeError
from rendezvous.acme.manager import AcmeManager

__all__ = ["LETS_ENCRYPT", "AcmeError", "AcmeManager"]
