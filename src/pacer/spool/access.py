"""Who may read a job file: the submitter's side and the daemon's side of one rule.

The daemon reads job files as the spool's owner and group (under systemd: user and
group ``pacer``). A file that reaches ``incoming/`` owned by someone else must be
readable by that group, so ``pacer submit`` gives its files to the spool's group with
mode 0640 (root may, and so may a member of the group), and refuses rather than
publish a job the daemon could not open. When the daemon meets a file it cannot
open anyway (dropped by hand), :func:`explain_unreadable` says exactly what to change.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import dataclass

JOB_FILE_MODE = 0o640
OVERFLOW_ID = 65534  # the kernel's id for users outside a user namespace's map


@dataclass(frozen=True, slots=True)
class Identity:
    """A user id and a group id: the daemon's, or a file's owner."""

    uid: int
    gid: int


class NotReadableByService(PermissionError):
    """The job file could not be made readable by the daemon; ``strerror`` says why.
    A PermissionError, so that callers that report OS errors report this one too."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def spool_identity(incoming: str | os.PathLike[str]) -> Identity:
    """The daemon's identity as the spool shows it: the owner and group of incoming/."""
    st = os.stat(incoming)
    return Identity(st.st_uid, st.st_gid)


def can_read(owner: Identity, mode: int, reader: Identity) -> bool:
    """Whether ``reader`` (a daemon whose own group is ``reader.gid``) may read a file
    owned by ``owner`` with permission bits ``mode``, by the usual owner/group/other rule."""
    if reader.uid == 0:
        return True
    if owner.uid == reader.uid:
        return bool(mode & stat.S_IRUSR)
    if owner.gid == reader.gid:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


def group_to_give(file_owner: Identity, service: Identity, *, euid: int,
                  groups: Collection[int]) -> int | None:
    """The group to hand a new job file to so that the daemon can read it, or None
    when no change is needed or none is allowed (chgrp needs root or membership)."""
    if file_owner.uid == service.uid or file_owner.gid == service.gid:
        return None
    if euid == 0 or service.gid in groups:
        return service.gid
    return None


def hand_over(fd: int, service: Identity) -> None:
    """Make the open job file ``fd`` readable by the daemon: mode 0640 whatever the
    umask, group = the spool's group when allowed. Raises :class:`NotReadableByService`
    when the daemon still could not read it (the caller must not publish it)."""
    os.fchmod(fd, JOB_FILE_MODE)
    st = os.fstat(fd)
    owner = Identity(st.st_uid, st.st_gid)
    gid = group_to_give(owner, service, euid=os.geteuid(), groups=os.getgroups())
    if gid is not None:
        try:
            os.fchown(fd, -1, gid)
        except PermissionError:
            pass  # judged just below, with the rest
        else:
            owner = Identity(owner.uid, gid)
    if not can_read(owner, JOB_FILE_MODE, service):
        raise NotReadableByService(
            f"the service (user {user_name(service.uid)}, group {group_name(service.gid)}) "
            f"could not read it: it would be owned by {user_name(owner.uid)}:"
            f"{group_name(owner.gid)} with mode 0640, and only root or a member of group "
            f"{group_name(service.gid)} may give it to that group. Run pacer submit as root, "
            f"or join the group (usermod -aG {group_name(service.gid)} "
            f"{user_name(os.geteuid())}, then log in again)")


def explain_unreadable(owner: Identity, mode: int, service: Identity, name: str) -> str:
    """What to change about a job file the daemon (``service``) could not open."""
    group = group_name(service.gid)
    who = f"{user_name(owner.uid)}:{group_name(owner.gid)}"
    if owner.uid == OVERFLOW_ID:
        # Under PrivateUsers= the service sees every other user as the overflow id.
        who = f"another user (the service sees {who})"
    have = (f"it is owned by {who} with mode {stat.S_IMODE(mode):04o}, and the service "
            f"runs as user {user_name(service.uid)}, group {group}")
    return (f"{have}: make job files readable by group {group} before moving them into "
            f"incoming/ (chgrp {group} {name} && chmod g+r {name}), or submit them with "
            "pacer submit, which does that")


def why_unreadable(path: str | os.PathLike[str]) -> str:
    """What to change about a job file this process (the daemon) may not open."""
    try:
        st = os.lstat(path)
    except OSError:
        return "it vanished"
    return explain_unreadable(Identity(st.st_uid, st.st_gid), st.st_mode,
                              Identity(os.geteuid(), os.getegid()), os.path.basename(path))
