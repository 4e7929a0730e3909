"""simx's shared library: what every program may import (runq, runweb, worker, ops, the CLI).

``protocol`` (messages and framing), ``client`` (the blocking runq client), ``auth``
(secrets and the handshake's proofs), ``tls``, ``config`` (settings), ``catalog`` (the
operator's engines file), ``paramschema``, ``sweep``, ``limits`` (every bound more than
one program checks), ``records`` (the stored records and their state vocabulary) and
``kinds`` (what a message field may hold).  The command line is ``simx.cli``.
What runs only inside the runq process lives in ``runq/``.
"""
