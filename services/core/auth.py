"""Sign-in for a shared server: users with PBKDF2-hashed passwords from secrets or the environment.

(Single sign-on is Streamlit's own OIDC login, configured in `.streamlit/secrets.toml` under `[auth]`; the
dashboard uses it when present. This module is the fallback for teams without an identity provider.)
Hashes look like `pbkdf2_sha256$600000$<salt b64>$<hash b64>`; `python -m services users hash` makes one.
Verification runs in constant time and the same time for an unknown user as for a wrong password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from services.core.settings import Settings

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000
_DUMMY = f"{ALGORITHM}${ITERATIONS}$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{ALGORITHM}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algorithm, iterations, salt, expected = encoded.split("$")
        if algorithm != ALGORITHM:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


def users(settings: Settings) -> dict[str, str]:
    return {name: secret.get_secret_value() for name, secret in settings.users.items()}


def check_credentials(settings: Settings, username: str, password: str) -> bool:
    """True for a known user with the right password; an unknown user costs the same time as a wrong one."""
    known = users(settings)
    encoded = known.get(username.strip())
    ok = verify_password(password, encoded or _DUMMY)
    return ok and encoded is not None


def sign_in_required(settings: Settings) -> bool:
    return bool(settings.users)
