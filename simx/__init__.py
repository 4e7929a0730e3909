"""simx's shared library: what every program may import (runq, runweb, worker, ops, the CLI).

``protocol`` (messages and framing), ``client`` (the blocking runq client), ``auth``
(secrets and the handshake's proofs), ``tls``, ``config`` (settings), ``catalog`` (the
operator's engines file), ``paramschema`` and ``sweep``.  The command line is ``simx.cli``.
What runs only inside the runq process lives in ``runq/``.
"""
