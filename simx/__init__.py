"""simx, the command line: submit batches to runweb, list and watch them, read results.

It talks to runweb over HTTP (JSON) only, never to runq, and holds no runq secret.
Modules, one noun each: ``config`` (where runweb is and who I am), ``http`` (the client),
``commands`` (one function per command), ``render`` (tables and progress), ``cli`` (argv).
"""
