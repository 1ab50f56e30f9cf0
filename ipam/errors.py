"""The IPAM exception family: every error names the thing and the fix."""

from __future__ import annotations


class IpamError(Exception):
    """Base of every error raised by ``ipam``."""


class IpamInvalid(IpamError, ValueError):
    """A malformed argument (CIDR, handle, selector, block size)."""


class IpamStoreUnavailable(IpamError):
    """etcd could not be reached (or did not answer) within the call deadline."""


class IpamConflict(IpamError):
    """Too many compare-and-swap conflicts in a row: the key is too hot."""


class IpamExhausted(IpamError):
    """No address could be found in any eligible pool (the message says why, per pool)."""


class IpamNotFound(IpamError):
    """A pool, block, handle or address that does not exist."""


class IpamAddressInUse(IpamError):
    """An explicit assignment asked for an address somebody else holds."""


class IpamReserved(IpamError):
    """An explicit assignment asked for a reserved address."""


class IpamPoolOverlap(IpamError):
    """A new pool overlaps an existing one."""


class IpamPoolInUse(IpamError):
    """A pool still has allocations and deletion was not forced."""


class IpamAffinityError(IpamError):
    """A block belongs to another node and the pool has strict affinity."""
