"""Bearer tokens: HS256 JWTs that grant publish and/or subscribe in one room.

Time checks are done here, not by PyJWT, so that callers (and tests) can pass
``now`` and so that expiry uses the same zero leeway everywhere.  Every failure
becomes an AuthError whose ``reason`` can go straight into an HTTP 401/403 body.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt

ISSUER = "sfu"
ADMIN_ROOM = "*"  # a token for this room is valid in every room
ACTIONS = ("publish", "subscribe", "admin")  # admin: the REST admin API; only with room "*"
_ALGORITHMS = ["HS256"]  # never "none", never an asymmetric alg keyed by our secret
_MAX_TOKEN_CHARS = 8192
# Three base64url segments; anything else is rejected before PyJWT sees it.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class AuthError(Exception):
    """Request not authorised; ``reason`` is a plain sentence safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    room: str
    publish: bool
    subscribe: bool
    identity: str | None
    expires_at: float
    admin: bool = False


def issue_token(
    secret: str,
    room: str,
    *,
    publish: bool = False,
    subscribe: bool = False,
    ttl_s: float = 3600,
    identity: str | None = None,
    now: float | None = None,
    admin: bool = False,
) -> str:
    """Sign a token for ``room`` ("*" for every room) that expires ``ttl_s`` from ``now``.

    ``admin`` (room "*" only) opens the REST admin API: listing rooms, peers and
    shards, closing peers.
    """
    if not secret:
        raise ValueError("secret must not be empty")
    if not room:
        raise ValueError("room must not be empty")
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    if admin and room != ADMIN_ROOM:
        raise ValueError(f'an admin token is for every room: room must be "{ADMIN_ROOM}"')
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "room": room,
        "publish": bool(publish),
        "subscribe": bool(subscribe),
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if identity is not None:
        claims["sub"] = identity
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=_ALGORITHMS[0])


def verify_token(
    secret: str, token: str | None, *, room: str, action: str, now: float | None = None
) -> Grant:
    """Return the token's Grant if it lets its bearer do ``action`` in ``room``.

    Raises AuthError for anything else, including garbage input: the token
    comes straight from an HTTP header, so no other exception may escape.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    if not secret:
        raise ValueError("secret must not be empty")
    if not token:
        raise AuthError("missing bearer token")
    if len(token) > _MAX_TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        raise AuthError("malformed token")
    claims = _decode(secret, token)
    grant = _grant_from(claims)
    at = time.time() if now is None else now
    not_before = claims.get("nbf")
    if not_before is not None and (not _is_time(not_before) or at < not_before):
        raise AuthError("token not yet valid")
    if at >= grant.expires_at:
        raise AuthError("token expired")
    if grant.room not in (room, ADMIN_ROOM):
        raise AuthError(f"token not valid for room {room!r}")
    if not getattr(grant, action):
        raise AuthError(f"token does not grant {action}")
    return grant


def bearer_token(authorization_header: str | None) -> str | None:
    """Extract the token from ``Authorization: Bearer <token>``; other schemes give None."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _decode(secret: str, token: str) -> dict[str, Any]:
    """Check signature, algorithm and issuer; time claims are left to the caller."""
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=_ALGORITHMS,
            issuer=ISSUER,
            options={
                "require": ["exp", "iss"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
        raise AuthError("bad token signature") from None
    except jwt.MissingRequiredClaimError as e:
        raise AuthError(f"token has no '{e.claim}' claim") from None
    except jwt.InvalidIssuerError:
        raise AuthError("token was not issued by this server") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthError("malformed token") from None


def _grant_from(claims: dict[str, Any]) -> Grant:
    room, publish, subscribe = claims.get("room"), claims.get("publish", False), claims.get("subscribe", False)
    identity, exp, admin = claims.get("sub"), claims["exp"], claims.get("admin", False)
    if (
        not isinstance(room, str)
        or not room
        or not isinstance(publish, bool)
        or not isinstance(subscribe, bool)
        or not isinstance(admin, bool)
        or not (identity is None or isinstance(identity, str))
        or not _is_time(exp)
    ):
        raise AuthError("malformed token")
    return Grant(room, publish, subscribe, identity, float(exp), admin and room == ADMIN_ROOM)


def _is_time(value: Any) -> bool:
    """A JWT NumericDate: a finite number, and not a JSON boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
