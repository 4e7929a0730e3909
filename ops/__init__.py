"""simx operations: hosts, supervisord config rendering and control, remote deployment, the demo.

Used by fabfile.py (a thin table of tasks) and, on every host, by ``python -m ops.agent``.
"""
