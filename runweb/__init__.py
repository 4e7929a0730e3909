"""runweb: the stateless REST API of simx (Falcon under gunicorn).

Every HTTP request becomes one request to runq over TCP; runweb keeps no state
and touches no database.  ``runweb.app`` builds the app, ``runweb.resources``
holds one resource per noun, ``runweb.batch_request`` checks POST /batch/new
bodies, ``runweb.auth`` decides who may call, ``runweb.media`` speaks YAML or
JSON, ``python -m runweb`` starts gunicorn, ``python -m runweb.users`` manages
the users file.
"""
