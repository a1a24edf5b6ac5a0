"""pytest plugin for gmqtt's broker tests (tests/tests/conformance.rs).

The suite logs in with a user name only (a flespi token, or an anonymous
broker); chatmq needs a password with it. This gives every
`set_auth_credentials` call without one the password in
CONFORMANCE_PASSWORD. Nothing else in the suite is changed.
"""
import os
import gmqtt

_orig = gmqtt.Client.set_auth_credentials

def _with_password(self, username, password=None):
    if password is None:
        password = os.environ.get("CONFORMANCE_PASSWORD")
    return _orig(self, username, password)

gmqtt.Client.set_auth_credentials = _with_password
